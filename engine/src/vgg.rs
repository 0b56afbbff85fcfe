//! VGG-16's convolutional stack, built only up to the deepest layer a job needs.
//!
//! Layers are named either Keras-style (`block4_conv2`) or Gatys-style (`relu4_2`);
//! both mean the output of that convolution after its ReLU (Keras convolutions carry
//! their ReLU). Tensors flow in channels-last layout (NCHW shape with NHWC strides),
//! which oneDNN on CPU and cuDNN on GPU run fastest.

use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};
pub use stylefarm_core::layers::{LayerId, Pooling, BLOCKS, CONV_COUNT};

/// Puts a 4-D tensor into channels-last memory layout, keeping its NCHW shape.
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// VGG-16 truncated after `depth` convolutions, weights on one device.
pub struct Vgg16 {
    convs: Vec<(Tensor, Tensor)>,
    pooling: Pooling,
}

impl Vgg16 {
    /// `convs`: (weight [out,in,3,3], bias [out]) for the first `convs.len()` layers.
    pub fn new(convs: Vec<(Tensor, Tensor)>, pooling: Pooling, device: Device, kind: Kind) -> Vgg16 {
        if device.is_cuda() {
            // a job runs the same shapes many times: let cuDNN time its kernels once
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let convs = convs.into_iter().map(|(w, b)| (channels_last(&w.to_device(device).to_kind(kind)), b.to_device(device).to_kind(kind))).collect();
        Vgg16 { convs, pooling }
    }

    /// The same model sharing its weight tensors (no device copy).
    pub fn shallow_clone(&self) -> Vgg16 {
        Vgg16 { convs: self.convs.iter().map(|(w, b)| (w.shallow_clone(), b.shallow_clone())).collect(), pooling: self.pooling }
    }

    pub fn depth(&self) -> usize {
        self.convs.len()
    }

    /// Tells models apart by their weights: a SHA-256 over the pooling, the
    /// depth, and the first and last convolutions' weights and biases (a
    /// model's cached results are keyed by it).
    pub fn fingerprint(&self) -> Result<[u8; 32]> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(format!("{:?} {}", self.pooling, self.convs.len()));
        for (weight, bias) in [self.convs.first(), self.convs.last()].into_iter().flatten() {
            for t in [weight, bias] {
                hash.update(host_bytes(t)?);
            }
        }
        Ok(hash.finalize().into())
    }
}

/// A tensor's values as f32 bytes on the host (for hashing).
pub fn host_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?.f_view([-1])?;
    let values: Vec<f32> = Vec::<f32>::try_from(&flat)?;
    Ok(values.into_iter().flat_map(f32::to_le_bytes).collect())
}

impl Vgg16 {
    /// Runs `input` [N,3,H,W] and returns the activations of `wanted` in the order
    /// given. Stops after the deepest wanted layer.
    pub fn forward(&self, input: &Tensor, wanted: &[LayerId]) -> Result<Vec<Tensor>> {
        let deepest = wanted.iter().map(|l| l.index()).max().unwrap_or(0);
        if deepest >= self.convs.len() {
            return Err(EngineError::param(
                "layers",
                format!("layer {} needs {} convolutions, the model was built with {}", LayerId::from_index(deepest), deepest + 1, self.convs.len()),
            ));
        }
        let mut outputs: Vec<Option<Tensor>> = wanted.iter().map(|_| None).collect();
        let mut x = channels_last(input);
        for index in 0..=deepest {
            let layer = LayerId::from_index(index);
            if layer.conv() == 1 && layer.block() > 1 {
                x = match self.pooling {
                    Pooling::Max => x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?,
                    Pooling::Avg => x.f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None)?,
                };
            }
            let (weight, bias) = &self.convs[index];
            x = x.f_conv2d(weight, Some(bias), [1, 1], [1, 1], [1, 1], 1)?.f_relu()?;
            for (slot, want) in outputs.iter_mut().zip(wanted) {
                if want.index() == index {
                    *slot = Some(x.shallow_clone());
                }
            }
        }
        Ok(outputs.into_iter().map(|o| o.expect("every wanted layer is at most the deepest")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_map_to_torchvision() {
        let l = LayerId::parse("relu4_2").unwrap();
        assert_eq!(l, LayerId::parse("block4_conv2").unwrap());
        assert_eq!(l.to_string(), "block4_conv2");
        assert_eq!(l.index(), 8);
        assert_eq!(l.torchvision_index(), 19);
        assert_eq!(LayerId::parse("block1_conv1").unwrap().torchvision_index(), 0);
        assert_eq!(LayerId::parse("block5_conv3").unwrap().torchvision_index(), 28);
        assert_eq!(LayerId::parse("block3_conv1").unwrap().in_channels(), 128);
        for i in 0..CONV_COUNT {
            assert_eq!(LayerId::from_index(i).index(), i);
        }
        assert!(LayerId::parse("block1_conv3").is_none());
        assert!(LayerId::parse("relu6_1").is_none());
        assert!(LayerId::parse("conv1_1").is_none());
    }
}
