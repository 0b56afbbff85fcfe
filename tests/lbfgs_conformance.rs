//! L-BFGS conformance: the engine's optimiser and `torch.optim.LBFGS` (PyTorch 2.11
//! from the setup's venv) visit the same points, to 1e-5 relative, on Rosenbrock and
//! on a small style problem, with and without the strong-Wolfe line search.

use anyhow::Result;
use stylefarm_engine::image_io::{load_rgb, resize, to_tensor};
use stylefarm_engine::loss::StyleObjective;
use stylefarm_engine::optim::{Evaluation, Lbfgs, LbfgsConfig, Objective, StopReason};
use stylefarm_engine::params::{Preset, RenderParams};
use stylefarm_engine::problem::write_problem;
use stylefarm_engine::safetensors::SafeTensors;
use stylefarm_engine::vgg::Vgg16;
use stylefarm_engine::weights::{Normalization, VggWeights};
use stylefarm_tests::{default_weights, problem_args, run_reference, sample};
use tch::{Device, Kind, Tensor};

/// Records every point it is evaluated at.
struct Recording<F> {
    inner: F,
    points: Vec<Vec<f64>>,
}

impl<F: Objective> Objective for Recording<F> {
    fn evaluate(&mut self, x: &Tensor) -> stylefarm_engine::Result<Evaluation> {
        self.points.push(Vec::<f64>::try_from(&x.to_kind(Kind::Double)).unwrap());
        self.inner.evaluate(x)
    }
}

struct Rosenbrock;

impl Objective for Rosenbrock {
    fn evaluate(&mut self, x: &Tensor) -> stylefarm_engine::Result<Evaluation> {
        let x = x.detach().set_requires_grad(true);
        let n = x.size()[0];
        let head = x.narrow(0, 0, n - 1);
        let tail = x.narrow(0, 1, n - 1);
        let f = ((&tail - head.square()).square() * 100.0 + (head.neg() + 1.0).square()).sum(Kind::Double);
        f.backward();
        Ok(Evaluation { values: f.detach().view([1]), grad: x.grad() })
    }
}

fn rel_norm(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm.max(1e-300)
}

/// Runs start + `iterations` iterates (stopping early as PyTorch would).
fn run_lbfgs<F: Objective>(f: &mut Recording<F>, cfg: LbfgsConfig, x0: &Tensor, iterations: u32) -> (u32, Option<StopReason>) {
    let mut opt = Lbfgs::new(cfg, x0);
    let mut report = opt.start(f).unwrap();
    let mut done = 0;
    while report.stop.is_none() && done < iterations {
        report = opt.iterate(f).unwrap();
        done += 1;
    }
    (done, report.stop)
}

fn rosenbrock_case(strong_wolfe: bool) -> Result<()> {
    let out = tempfile::tempdir()?;
    let json_path = out.path().join("torch.json");
    let mut args = vec!["lbfgs-rosenbrock", "--out", json_path.to_str().unwrap(), "--iterations", "30", "--history", "10"];
    if strong_wolfe {
        args.push("--strong-wolfe");
    }
    run_reference(&args)?;
    let torch: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path)?)?;
    let torch_points: Vec<Vec<f64>> = serde_json::from_value(torch["evaluated_points"].clone())?;
    let torch_iters = torch["n_iter"].as_u64().unwrap() as u32;

    let mut cfg = LbfgsConfig::new(30);
    cfg.history_size = 10;
    cfg.strong_wolfe = strong_wolfe;
    let x0 = Tensor::from_slice(&[-1.5f64, 2.0, -0.5, 1.2]);
    let mut f = Recording { inner: Rosenbrock, points: Vec::new() };
    let (iters, stop) = run_lbfgs(&mut f, cfg, &x0, 30);

    assert_eq!(iters, torch_iters, "iterations run (stop {stop:?})");
    assert!(f.points.len() >= torch_points.len(), "{} evaluations vs torch {}", f.points.len(), torch_points.len());
    for (i, (ours, theirs)) in f.points.iter().zip(&torch_points).enumerate() {
        let err = rel_norm(ours, theirs);
        assert!(err <= 1e-5, "evaluation {i}: ours {ours:?} torch {theirs:?} rel {err:e}");
    }
    // the optimiser really travelled: the last point is far from the start
    assert!(rel_norm(f.points.last().unwrap(), &[-1.5, 2.0, -0.5, 1.2]) > 0.5);
    if strong_wolfe {
        assert_eq!(stop, Some(StopReason::MaxEvaluations), "torch stopped on max_eval too");
    }
    Ok(())
}

#[test]
fn rosenbrock_fixed_step_matches_torch() -> Result<()> {
    rosenbrock_case(false)
}

#[test]
fn rosenbrock_strong_wolfe_matches_torch() -> Result<()> {
    rosenbrock_case(true)
}

fn style_case(strong_wolfe: bool) -> Result<()> {
    let iterations = 8u32;
    let params = RenderParams { size: 32, ..RenderParams::preset(Preset::Keras) };
    let weights = VggWeights::load(&default_weights(), params.depth(), None)?;
    let norm = Normalization::caffe();
    let content = load_rgb(&sample("chelsea.png"), "content")?;
    let style = load_rgb(&sample("hubble_deep_field.jpg"), "style")?;
    let net = |img: &image::RgbImage| norm.to_network(&to_tensor(&resize(img, 32, 24), Kind::Float, Device::Cpu));
    let (content_net, style_net) = (net(&content), net(&style));
    let dir = tempfile::tempdir()?;
    let files = write_problem(dir.path(), &content_net, &[style_net.shallow_clone()], None, &params)?;
    let torch_out = dir.path().join("torch.safetensors");
    let iters = iterations.to_string();
    let mut args = problem_args("lbfgs-style", &default_weights(), &files);
    args.extend(["--iterations".into(), iters, "--out".into(), torch_out.display().to_string()]);
    if strong_wolfe {
        args.push("--strong-wolfe".into());
    }
    run_reference(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let torch = SafeTensors::parse(&std::fs::read(&torch_out)?).map_err(anyhow::Error::msg)?;

    // the same problem in float64, as the reference runs it
    let model = Vgg16::new(weights.tensors(params.depth()), params.pooling, Device::Cpu, Kind::Double);
    let (c64, s64) = (content_net.to_kind(Kind::Double), style_net.to_kind(Kind::Double));
    let objective = StyleObjective::new(model, &params, &c64, &[s64], &[1.0])?;
    let (h, w) = (objective.height(), objective.width());
    let mut f = Recording { inner: objective, points: Vec::new() };
    let mut cfg = LbfgsConfig::new(iterations);
    cfg.tolerance_grad = -1.0;
    cfg.tolerance_change = -1.0;
    cfg.strong_wolfe = strong_wolfe;
    run_lbfgs(&mut f, cfg, &StyleObjective::flatten(&c64)?, iterations);

    let torch_points: Vec<(&String, _)> = torch.tensors.iter().filter(|(k, _)| k.starts_with("eval")).collect();
    assert!(torch_points.len() >= iterations as usize, "torch evaluated {} points", torch_points.len());
    for (i, ((name, theirs), ours)) in torch_points.iter().zip(&f.points).enumerate() {
        // ours are NHWC-flat; torch's are NCHW
        let ours_nchw = Tensor::from_slice(ours).view([1, h, w, 3]).permute([0, 3, 1, 2]).contiguous().view([-1]);
        let ours_nchw = Vec::<f64>::try_from(&ours_nchw)?;
        let theirs: Vec<f64> = theirs.data.iter().map(|&v| v as f64).collect();
        let err = rel_norm(&ours_nchw, &theirs);
        // torch's points come back as f32 in the file: compare at that precision too
        assert!(err <= 1e-5, "{name} (evaluation {i}): rel {err:e}");
    }
    let first = &f.points[0];
    let last = f.points.last().unwrap();
    assert!(rel_norm(last, first) > 1e-3, "the image changed: {:e}", rel_norm(last, first));
    Ok(())
}

#[test]
fn style_problem_fixed_step_matches_torch() -> Result<()> {
    style_case(false)
}

#[test]
fn style_problem_strong_wolfe_matches_torch() -> Result<()> {
    style_case(true)
}
