//! A small, strict reader and a deterministic writer for the safetensors format
//! (8-byte little-endian header length, a JSON header, then raw little-endian data).
//!
//! Only what VGG weights need: F32/F64/F16/BF16 tensors and the `__metadata__`
//! string map, which carries the input normalisation. Every malformed field is an
//! error that names it; nothing here panics on a hostile file.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Element types accepted in weights files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    F16,
    BF16,
}

impl Dtype {
    fn parse(name: &str) -> Option<Dtype> {
        match name {
            "F32" => Some(Dtype::F32),
            "F64" => Some(Dtype::F64),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
}

/// One tensor's raw data, converted to f32.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A parsed safetensors file.
#[derive(Debug, Clone, Default)]
pub struct SafeTensors {
    pub tensors: BTreeMap<String, RawTensor>,
    pub metadata: BTreeMap<String, String>,
}

/// Largest header we accept: real headers are a few kilobytes.
const MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;

fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) & 1) as u32;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let value = match (exponent, mantissa) {
        (0, 0) => 0.0,
        (0, m) => (m as f32) * 2f32.powi(-24),
        (31, 0) => f32::INFINITY,
        (31, _) => f32::NAN,
        (e, m) => (1.0 + m as f32 / 1024.0) * 2f32.powi(e as i32 - 15),
    };
    if sign == 1 {
        -value
    } else {
        value
    }
}

impl SafeTensors {
    /// Parses `bytes`; the error says what is wrong (the caller adds which file).
    pub fn parse(bytes: &[u8]) -> Result<SafeTensors, String> {
        if bytes.len() < 8 {
            return Err(format!("file is {} bytes, shorter than the 8-byte header length", bytes.len()));
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER_BYTES || 8 + header_len > bytes.len() as u64 {
            return Err(format!("header length {header_len} is larger than the file ({} bytes) or the limit ({MAX_HEADER_BYTES})", bytes.len()));
        }
        let header_end = 8 + header_len as usize;
        let header: Value = serde_json::from_slice(&bytes[8..header_end]).map_err(|e| format!("header is not valid JSON: {e}"))?;
        let Value::Object(entries) = header else {
            return Err("header is not a JSON object".into());
        };
        let data = &bytes[header_end..];
        let mut out = SafeTensors::default();
        for (name, entry) in entries {
            if name == "__metadata__" {
                out.metadata = parse_metadata(&entry)?;
                continue;
            }
            let tensor = parse_entry(&name, &entry, data)?;
            out.tensors.insert(name, tensor);
        }
        Ok(out)
    }

    /// Serialises as F32 tensors in name order, header padded to 8 bytes: the same
    /// tensors and metadata always give the same bytes (and so the same SHA-256).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = Map::new();
        if !self.metadata.is_empty() {
            let meta: Map<String, Value> = self.metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            header.insert("__metadata__".into(), Value::Object(meta));
        }
        let mut offset = 0usize;
        for (name, tensor) in &self.tensors {
            let len = tensor.data.len() * 4;
            let mut entry = Map::new();
            entry.insert("dtype".into(), Value::String("F32".into()));
            entry.insert("shape".into(), Value::from(tensor.shape.clone()));
            entry.insert("data_offsets".into(), Value::from(vec![offset, offset + len]));
            header.insert(name.clone(), Value::Object(entry));
            offset += len;
        }
        let mut header_bytes = serde_json::to_vec(&Value::Object(header)).expect("JSON of strings and numbers");
        while header_bytes.len() % 8 != 0 {
            header_bytes.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + header_bytes.len() + offset);
        out.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&header_bytes);
        for tensor in self.tensors.values() {
            for value in &tensor.data {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        out
    }
}

fn parse_metadata(entry: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Object(map) = entry else {
        return Err("`__metadata__` is not an object".into());
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(format!("`__metadata__.{k}` is not a string")),
        })
        .collect()
}

fn parse_entry(name: &str, entry: &Value, data: &[u8]) -> Result<RawTensor, String> {
    let dtype_name = entry.get("dtype").and_then(Value::as_str).ok_or_else(|| format!("tensor `{name}`: missing `dtype`"))?;
    let dtype = Dtype::parse(dtype_name).ok_or_else(|| format!("tensor `{name}`: dtype {dtype_name} is not one of F32, F64, F16, BF16"))?;
    let shape: Vec<usize> = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("tensor `{name}`: missing `shape`"))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("tensor `{name}`: `shape` must be a list of non-negative integers"))?;
    let offsets: Vec<usize> =
        entry.get("data_offsets").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect()).unwrap_or_default();
    let [begin, end] = offsets[..] else {
        return Err(format!("tensor `{name}`: `data_offsets` must be two integers"));
    };
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let expected = count.and_then(|c| c.checked_mul(dtype.size()));
    if begin > end || end > data.len() || Some(end - begin) != expected {
        return Err(format!(
            "tensor `{name}`: data_offsets [{begin}, {end}] do not fit shape {shape:?} of {dtype_name} in a data section of {} bytes",
            data.len()
        ));
    }
    let raw = &data[begin..end];
    let values = match dtype {
        Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
        Dtype::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8")) as f32).collect(),
        Dtype::F16 => raw.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        Dtype::BF16 => raw.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
    };
    Ok(RawTensor { shape, data: values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_tensors_and_metadata() {
        let mut st = SafeTensors::default();
        st.tensors.insert("b".into(), RawTensor { shape: vec![2], data: vec![1.5, -2.0] });
        st.tensors.insert("a".into(), RawTensor { shape: vec![1, 3], data: vec![0.0, 1.0, 2.0] });
        st.metadata.insert("normalization".into(), "caffe".into());
        let bytes = st.to_bytes();
        let back = SafeTensors::parse(&bytes).unwrap();
        assert_eq!(back.tensors["a"].data, vec![0.0, 1.0, 2.0]);
        assert_eq!(back.tensors["b"].shape, vec![2]);
        assert_eq!(back.metadata["normalization"], "caffe");
        assert_eq!(bytes, back.to_bytes(), "serialisation is deterministic");
    }

    #[test]
    fn truncated_and_lying_files_are_errors() {
        assert!(SafeTensors::parse(&[1, 2, 3]).unwrap_err().contains("shorter"));
        let mut bad = (1u64 << 40).to_le_bytes().to_vec();
        bad.extend_from_slice(b"{}");
        assert!(SafeTensors::parse(&bad).unwrap_err().contains("header length"));
        let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut short = (header.len() as u64).to_le_bytes().to_vec();
        short.extend_from_slice(header);
        short.extend_from_slice(&[0u8; 8]);
        let err = SafeTensors::parse(&short).unwrap_err();
        assert!(err.contains("tensor `w`"), "{err}");
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
    }
}
