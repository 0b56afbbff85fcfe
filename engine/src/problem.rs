//! A style problem written for the in-repo PyTorch reference
//! (`reference/style_reference.py`): the images in network units as safetensors and
//! the parameters as JSON. Tests and the benchmark use it to run both
//! implementations on the same inputs.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};
use crate::params::RenderParams;
use crate::safetensors::{RawTensor, SafeTensors};

pub struct ProblemFiles {
    pub inputs: PathBuf,
    pub params: PathBuf,
}

/// A tensor as f32 host data in its logical (NCHW, contiguous) order.
pub fn raw(t: &Tensor) -> Result<RawTensor> {
    let shape = t.size().iter().map(|&d| d as usize).collect();
    let flat = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?.f_view([-1])?;
    Ok(RawTensor { shape, data: Vec::<f32>::try_from(&flat)? })
}

/// Writes `content`, `style{i}` and optionally `image` (all [1,3,H,W], network
/// units) and `params` under `dir`.
pub fn write_problem(dir: &Path, content: &Tensor, styles: &[Tensor], image: Option<&Tensor>, params: &RenderParams) -> Result<ProblemFiles> {
    let mut file = SafeTensors::default();
    file.tensors.insert("content".into(), raw(content)?);
    for (i, s) in styles.iter().enumerate() {
        file.tensors.insert(format!("style{i}"), raw(s)?);
    }
    if let Some(img) = image {
        file.tensors.insert("image".into(), raw(img)?);
    }
    let out_err = |path: &Path, e: std::io::Error| EngineError::Output { path: path.to_path_buf(), reason: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| out_err(dir, e))?;
    let inputs = dir.join("inputs.safetensors");
    std::fs::write(&inputs, file.to_bytes()).map_err(|e| out_err(&inputs, e))?;
    let params_path = dir.join("params.json");
    std::fs::write(&params_path, serde_json::to_vec_pretty(params).expect("params serialise")).map_err(|e| out_err(&params_path, e))?;
    Ok(ProblemFiles { inputs, params: params_path })
}
