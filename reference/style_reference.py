"""Eager PyTorch reference for stylefarm's engine.

The same recipes (the `keras` and `gatys` presets and every knob the losses read)
written the way a PyTorch user would write them: an nn.Sequential VGG-16 truncated
after the deepest layer needed, weights frozen, targets computed once, NCHW tensors.
The Rust tests compare the engine against it (losses, L-BFGS iterates) and the
benchmark times it side by side with the engine.

Usage (all I/O is safetensors + JSON, so no extra packages are needed):
  python reference/style_reference.py losses   --weights W --inputs IN.safetensors --params P.json --out OUT.json
  python reference/style_reference.py lbfgs-rosenbrock --out OUT.json [--strong-wolfe] [--iterations N]
  python reference/style_reference.py lbfgs-style --weights W --inputs IN --params P.json --iterations N --out OUT.safetensors
  python reference/style_reference.py bench    --weights W --inputs IN --params P.json --repeats N [--device cuda]
  python reference/style_reference.py run      --weights W --inputs IN --params P.json --iterations N [--device cuda]
"""

import argparse
import json
import statistics
import struct
import sys
import time

import torch
import torch.nn as nn

BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    body = memoryview(data)[8 + n :]
    tensors = {}
    for name, entry in header.items():
        b, e = entry["data_offsets"]
        t = torch.frombuffer(bytearray(body[b:e]), dtype=DTYPES[entry["dtype"]]) if e > b else torch.empty(0, dtype=DTYPES[entry["dtype"]])
        tensors[name] = t.reshape(entry["shape"]).clone()
    return tensors, meta


def write_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def layer_index(name):
    """block4_conv2 / relu4_2 -> (block, conv) -> position among the 13 convs."""
    if name.startswith("block"):
        b, c = name[len("block") :].split("_conv")
    else:
        b, c = name[len("relu") :].split("_")
    b, c = int(b), int(c)
    return sum(len(x) for x in BLOCKS[: b - 1]) + c - 1


class Vgg16Features(nn.Module):
    """torchvision's VGG-16 `features`, truncated after conv number `depth`."""

    def __init__(self, weights, depth, pooling="max"):
        super().__init__()
        layers, conv, in_c, tv = [], 0, 3, 0
        self.taps = {}
        for bi, block in enumerate(BLOCKS):
            if conv >= depth:
                break
            if bi > 0:
                layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
                tv += 1
            for out_c in block:
                if conv >= depth:
                    break
                c = nn.Conv2d(in_c, out_c, 3, padding=1)
                c.weight.data.copy_(weights[f"features.{tv}.weight"])
                c.bias.data.copy_(weights[f"features.{tv}.bias"])
                layers += [c, nn.ReLU(inplace=False)]
                self.taps[conv] = len(layers) - 1
                conv, in_c, tv = conv + 1, out_c, tv + 2
        self.layers = nn.Sequential(*layers)
        self.requires_grad_(False)

    def forward(self, x, wanted):
        want = {self.taps[i]: i for i in wanted}
        out = {}
        last = max(want)
        for pos, layer in enumerate(self.layers):
            x = layer(x)
            if pos in want:
                out[want[pos]] = x
            if pos == last:
                break
        return out


def gram(f, normalise):
    _, c, h, w = f.shape
    flat = f.reshape(c, h * w)
    g = flat @ flat.t()
    return g / (c * h * w) if normalise else g


def total_variation(x, exponent):
    a = (x[:, :, :-1, :-1] - x[:, :, 1:, :-1]) ** 2
    b = (x[:, :, :-1, :-1] - x[:, :, :-1, 1:]) ** 2
    s = a + b
    return (s if exponent == 1.0 else s ** exponent).sum()


class Recipe:
    """The loss of one job, from the engine's RenderParams JSON."""

    def __init__(self, params, weights, content, styles, dtype=torch.float32):
        self.p = params
        self.content_layers = [layer_index(n) for n in params["content_layers"]]
        self.style_layers = [layer_index(n) for n in params["style_layers"]]
        depth = max(self.content_layers + self.style_layers) + 1
        self.model = Vgg16Features(weights, depth, params["pooling"]).to(content.device, dtype)
        n = len(self.style_layers)
        per = params["style_weight"] / n if params["style_weighting"] == "split" else params["style_weight"]
        self.style_weights = [per * w for w in params["style_layer_weights"]]
        blend = params["style_blend_weights"] or [1.0] * len(styles)
        blend = [b / sum(blend) for b in blend]
        self.normalise = params["style_loss"] == "mse"
        with torch.no_grad():
            feats = self.model(content, self.content_layers)
            self.content_targets = [feats[i].detach() for i in self.content_layers]
            self.style_targets = [0.0] * n
            for s, wgt in zip(styles, blend):
                sf = self.model(s, self.style_layers)
                for k, i in enumerate(self.style_layers):
                    self.style_targets[k] = self.style_targets[k] + gram(sf[i], self.normalise) * wgt

    def losses(self, x):
        p = self.p
        wanted = sorted(set(self.content_layers + self.style_layers))
        feats = self.model(x, wanted)
        content = x.new_zeros(())
        for i, t in zip(self.content_layers, self.content_targets):
            d = (feats[i] - t) ** 2
            content = content + (d.sum() if p["content_loss"] == "sum" else d.mean())
        content = content * p["content_weight"]
        hw = x.shape[2] * x.shape[3]
        style = x.new_zeros(())
        for i, t, w in zip(self.style_layers, self.style_targets, self.style_weights):
            d = (gram(feats[i], self.normalise) - t) ** 2
            term = d.sum() / (4.0 * 9.0 * hw * hw) if p["style_loss"] == "keras" else d.mean()
            style = style + term * w
        tv = total_variation(x, p["tv_exponent"]) * p["tv_weight"] if p["tv_weight"] != 0 else x.new_zeros(())
        return content + style + tv, content, style, tv


class KerasRecipePort:
    """The Keras recipe ported line for line: every evaluation feeds the batch
    [content, style, combination] through the whole VGG-16 conv base
    (`include_top=False`: all 13 convolutions and 5 poolings) and takes the losses
    from the batch's features, as the original does with one Keras function.
    Same formulas as Recipe (keras preset), none of the engine's savings."""

    def __init__(self, params, weights, content, styles, dtype=torch.float32):
        self.p = params
        self.model = Vgg16Features(weights, 13, params["pooling"]).to(content.device, dtype)
        self.pool5 = nn.MaxPool2d(2, 2) if params["pooling"] == "max" else nn.AvgPool2d(2, 2)
        self.content, self.style = content, styles[0]
        self.content_layer = layer_index(params["content_layers"][0])
        self.style_layers = [layer_index(n) for n in params["style_layers"]]
        n = len(self.style_layers)
        per = params["style_weight"] / n if params["style_weighting"] == "split" else params["style_weight"]
        self.style_weights = [per * w for w in params["style_layer_weights"]]

    def losses(self, x):
        p = self.p
        batch = torch.cat([self.content, self.style, x], 0)
        feats = self.model(batch, list(range(13)))
        _ = self.pool5(feats[12])  # block5_pool: part of the conv base the recipe builds
        f = feats[self.content_layer]
        content = ((f[2] - f[0]) ** 2).sum() * p["content_weight"]
        hw = x.shape[2] * x.shape[3]
        style = x.new_zeros(())
        for i, w in zip(self.style_layers, self.style_weights):
            s, c = gram(feats[i][1:2], False), gram(feats[i][2:3], False)
            style = style + ((c - s) ** 2).sum() / (4.0 * 9.0 * hw * hw) * w
        tv = total_variation(x, p["tv_exponent"]) * p["tv_weight"]
        return content + style + tv, content, style, tv


def load_problem(args, dtype=torch.float32):
    device = torch.device(getattr(args, "device", "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    weights, _ = read_safetensors(args.weights)
    inputs, _ = read_safetensors(args.inputs)
    with open(args.params) as f:
        params = json.load(f)
    content = inputs["content"].to(device, dtype)
    styles = [inputs[k].to(device, dtype) for k in sorted(k for k in inputs if k.startswith("style"))]
    image = inputs.get("image", inputs["content"]).to(device, dtype)
    weights = {k: v.to(device, dtype) for k, v in weights.items()}
    kind = KerasRecipePort if getattr(args, "mode", "tuned") == "recipe" else Recipe
    recipe = kind(params, weights, content, styles, dtype)
    recipe.model.to(device)
    return recipe, image, params


def cmd_losses(args):
    recipe, image, _ = load_problem(args)
    x = image.clone().requires_grad_(True)
    total, content, style, tv = recipe.losses(x)
    total.backward()
    out = {"total": total.item(), "content": content.item(), "style": style.item(), "tv": tv.item(),
           "grad_norm": x.grad.norm().item()}
    write_safetensors(args.out + ".grad.safetensors", {"grad": x.grad})
    with open(args.out, "w") as f:
        json.dump(out, f)


def rosenbrock(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def cmd_lbfgs_rosenbrock(args):
    x = torch.tensor([-1.5, 2.0, -0.5, 1.2], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([x], lr=args.lr, max_iter=args.iterations, history_size=args.history,
                            line_search_fn="strong_wolfe" if args.strong_wolfe else None)
    iterates = [x.detach().clone().tolist()]
    # Record every iterate: wrap the parameter update through a hook on the closure.
    losses = []

    def closure():
        opt.zero_grad()
        loss = rosenbrock(x)
        loss.backward()
        losses.append(loss.item())
        iterates.append(x.detach().clone().tolist())
        return loss

    opt.step(closure)
    state = opt.state[x]
    with open(args.out, "w") as f:
        json.dump({"evaluated_points": iterates[1:], "losses": losses, "final": x.detach().tolist(),
                   "n_iter": state["n_iter"], "func_evals": state["func_evals"]}, f)


def cmd_lbfgs_style(args):
    recipe, image, params = load_problem(args, torch.float64)
    x = image.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=args.iterations, history_size=args.history,
                            tolerance_grad=-1, tolerance_change=-1,
                            line_search_fn="strong_wolfe" if args.strong_wolfe else None)
    points = []

    def closure():
        opt.zero_grad()
        total = recipe.losses(x)[0]
        total.backward()
        points.append(x.detach().clone())
        return total

    opt.step(closure)
    out = {f"eval{i:04d}": p for i, p in enumerate(points)}
    out["final"] = x.detach().clone()
    write_safetensors(args.out, out)


def cmd_run(args):
    """A whole render with torch.optim.LBFGS, as the engine's params describe it."""
    recipe, image, params = load_problem(args)
    opt_p = params["optimizer"]
    x = image.clone().requires_grad_(True)
    budget = opt_p.get("max_evaluations") or 1 + args.iterations * (10 if opt_p["strong_wolfe"] else 1)
    opt = torch.optim.LBFGS([x], lr=opt_p["lr"], max_iter=args.iterations, max_eval=budget,
                            history_size=opt_p["history_size"], tolerance_grad=opt_p["tolerance_grad"],
                            tolerance_change=opt_p["tolerance_change"],
                            line_search_fn="strong_wolfe" if opt_p["strong_wolfe"] else None)
    losses = []
    first_levels = opt_p.get("first_step_levels")

    def closure():
        opt.zero_grad()
        total = recipe.losses(x)[0]
        total.backward()
        losses.append(total.item())
        return total

    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if first_levels:
        # The engine's first step (no pixel moves more than `first_levels` 8-bit
        # levels): one step() of one iteration with lr scaled to give that t, then
        # the rest with the configured lr; LBFGS keeps its state between step() calls.
        closure()
        g = x.grad.detach()
        scale = 255.0 if params.get("normalization") in (None, "caffe") else 1.0 / 0.225
        t_first = first_levels / 255.0 * scale / g.abs().max().item()
        group = opt.param_groups[0]
        group["lr"], group["max_iter"] = t_first / min(1.0, 1.0 / g.abs().sum().item()), 1
        opt.step(closure)
        group["lr"], group["max_iter"] = opt_p["lr"], args.iterations - 1
    opt.step(closure)
    if x.is_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {"seconds": elapsed, "iterations": opt.state[x]["n_iter"], "evaluations": opt.state[x]["func_evals"],
           "first_loss": losses[0], "last_loss": losses[-1]}
    if x.is_cuda:
        out["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    print(json.dumps(out))


def cmd_bench(args):
    torch.set_grad_enabled(True)
    recipe, image, _ = load_problem(args)
    times = []
    for i in range(args.warmup + args.repeats):
        x = image.clone().requires_grad_(True)
        t0 = time.perf_counter()
        total = recipe.losses(x)[0]
        total.backward()
        _ = x.grad.sum().item()  # waits for the device
        if i >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"mode": args.mode, "median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ["losses", "lbfgs-style", "bench", "run"]:
        s = sub.add_parser(name)
        s.add_argument("--weights", required=True)
        s.add_argument("--inputs", required=True)
        s.add_argument("--params", required=True)
        s.add_argument("--out")
        s.add_argument("--iterations", type=int, default=10)
        s.add_argument("--history", type=int, default=100)
        s.add_argument("--strong-wolfe", action="store_true")
        s.add_argument("--repeats", type=int, default=5)
        s.add_argument("--warmup", type=int, default=2)
        s.add_argument("--device", default="cpu")
        s.add_argument("--mode", choices=["tuned", "recipe"], default="tuned",
                       help="tuned: truncated VGG, targets computed once; recipe: the Keras recipe as written")
    r = sub.add_parser("lbfgs-rosenbrock")
    r.add_argument("--out", required=True)
    r.add_argument("--iterations", type=int, default=40)
    r.add_argument("--history", type=int, default=10)
    r.add_argument("--lr", type=float, default=1.0)
    r.add_argument("--strong-wolfe", action="store_true")
    args = ap.parse_args()
    {"losses": cmd_losses, "lbfgs-rosenbrock": cmd_lbfgs_rosenbrock, "lbfgs-style": cmd_lbfgs_style,
     "bench": cmd_bench, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
