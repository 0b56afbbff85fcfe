//! VGG-16's convolutional stack, built only up to the deepest layer a job needs.
//!
//! Layers are named either Keras-style (`block4_conv2`) or Gatys-style (`relu4_2`);
//! both mean the output of that convolution after its ReLU (Keras convolutions carry
//! their ReLU). Tensors flow in channels-last layout (NCHW shape with NHWC strides),
//! which oneDNN on CPU and cuDNN on GPU run fastest.

use std::fmt;

use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};

/// Output channels of VGG-16's 13 convolutions, block by block.
pub const BLOCKS: [&[i64]; 5] = [&[64, 64], &[128, 128], &[256, 256, 256], &[512, 512, 512], &[512, 512, 512]];

/// Number of convolutions in VGG-16.
pub const CONV_COUNT: usize = 13;

/// One convolution (with its ReLU) of VGG-16: `block` 1..=5, `conv` 1..=3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LayerId {
    block: u8,
    conv: u8,
}

impl LayerId {
    pub fn new(block: u8, conv: u8) -> Option<LayerId> {
        let convs = BLOCKS.get(block.checked_sub(1)? as usize)?.len() as u8;
        (conv >= 1 && conv <= convs).then_some(LayerId { block, conv })
    }

    /// Position of this convolution among the 13 (0-based).
    pub fn index(self) -> usize {
        BLOCKS[..(self.block - 1) as usize].iter().map(|b| b.len()).sum::<usize>() + (self.conv - 1) as usize
    }

    pub fn from_index(index: usize) -> LayerId {
        let mut rest = index;
        for (block, convs) in BLOCKS.iter().enumerate() {
            if rest < convs.len() {
                return LayerId { block: block as u8 + 1, conv: rest as u8 + 1 };
            }
            rest -= convs.len();
        }
        panic!("conv index {index} out of range 0..{CONV_COUNT}");
    }

    /// Index of this convolution in torchvision's `features` Sequential.
    pub fn torchvision_index(self) -> usize {
        // each block contributes conv,relu pairs then one pool
        let before: usize = BLOCKS[..(self.block - 1) as usize].iter().map(|b| b.len() * 2 + 1).sum();
        before + (self.conv as usize - 1) * 2
    }

    pub fn block(self) -> u8 {
        self.block
    }

    pub fn conv(self) -> u8 {
        self.conv
    }

    pub fn in_channels(self) -> i64 {
        if self.index() == 0 {
            return 3;
        }
        LayerId::from_index(self.index() - 1).out_channels()
    }

    pub fn out_channels(self) -> i64 {
        BLOCKS[(self.block - 1) as usize][(self.conv - 1) as usize]
    }

    /// Parses `block4_conv2`, `relu4_2`.
    pub fn parse(name: &str) -> Option<LayerId> {
        let name = name.trim();
        let (block, conv) = if let Some(rest) = name.strip_prefix("block") {
            rest.split_once("_conv")?
        } else if let Some(rest) = name.strip_prefix("relu") {
            rest.split_once('_')?
        } else {
            return None;
        };
        LayerId::new(block.parse().ok()?, conv.parse().ok()?)
    }

    /// Parses with an error naming the job field.
    pub fn parse_field(name: &str, field: &str) -> Result<LayerId> {
        LayerId::parse(name).ok_or_else(|| {
            EngineError::param(
                field,
                format!("`{name}` is not a VGG-16 layer: use block1_conv1..block5_conv3 or relu1_1..relu5_3"),
            )
        })
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block{}_conv{}", self.block, self.conv)
    }
}

impl TryFrom<String> for LayerId {
    type Error = String;
    fn try_from(value: String) -> std::result::Result<Self, Self::Error> {
        LayerId::parse(&value).ok_or_else(|| format!("`{value}` is not a VGG-16 layer"))
    }
}

impl From<LayerId> for String {
    fn from(value: LayerId) -> String {
        value.to_string()
    }
}

/// Down-sampling between blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Max,
    Avg,
}

impl std::str::FromStr for Pooling {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Pooling> {
        match s {
            "max" => Ok(Pooling::Max),
            "avg" | "average" => Ok(Pooling::Avg),
            other => Err(EngineError::param("pooling", format!("`{other}` is not one of max, avg"))),
        }
    }
}

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
        let convs = convs
            .into_iter()
            .map(|(w, b)| (channels_last(&w.to_device(device).to_kind(kind)), b.to_device(device).to_kind(kind)))
            .collect();
        Vgg16 { convs, pooling }
    }

    /// The same model sharing its weight tensors (no device copy).
    pub fn shallow_clone(&self) -> Vgg16 {
        Vgg16 { convs: self.convs.iter().map(|(w, b)| (w.shallow_clone(), b.shallow_clone())).collect(), pooling: self.pooling }
    }

    pub fn depth(&self) -> usize {
        self.convs.len()
    }

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
