//! VGG-16's layer names: `block4_conv2` (Keras) or `relu4_2` (Gatys) both mean the
//! output of that convolution after its ReLU. Shared by the engine (which builds the
//! network) and the coordinator (which validates jobs without libtorch).

use std::fmt;

use crate::error::{ParamError, Result};

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
        LayerId::parse(name)
            .ok_or_else(|| ParamError::new(field, format!("`{name}` is not a VGG-16 layer: use block1_conv1..block5_conv3 or relu1_1..relu5_3")))
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
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Pooling> {
        match s {
            "max" => Ok(Pooling::Max),
            "avg" | "average" => Ok(Pooling::Avg),
            other => Err(ParamError::new("pooling", format!("`{other}` is not one of max, avg"))),
        }
    }
}
