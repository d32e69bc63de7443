//! Raw named tensors in and out.

use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType};

use super::Onnx;
use crate::backend::writer::{Elem, Out, TensorsWriter};
use crate::backend::BackendError;
use crate::protocol::{
    f32_native, i32_native, i64_native, u64_native, ArchivedInput, ArchivedRequest,
    ArchivedTensorData,
};

impl Onnx {
    /// Runs one tensors request: inputs are views of the archived request's data (no copy), the
    /// outputs are copied once into the answer's chunk.
    pub(super) fn run_tensors(
        &self,
        req: &ArchivedRequest,
        out: &mut Out<'_>,
    ) -> Result<(), BackendError> {
        let ArchivedInput::Tensors(ts) = &req.input else {
            return Err(BackendError::Invalid(
                "this model takes tensors (Input::Tensors)".into(),
            ));
        };
        let invalid = |m: String| BackendError::Invalid(m);
        let mut inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(ts.len());
        for t in ts.iter() {
            let name = t.name.as_str();
            let Some((_, ty, want)) = self.inputs.iter().find(|(n, ..)| n == name) else {
                return Err(invalid(format!(
                    "the model has no input {name:?} (it takes {:?})",
                    self.inputs.iter().map(|i| &i.0).collect::<Vec<_>>()
                )));
            };
            let shape: Vec<i64> = u64_native(&t.shape)
                .iter()
                .map(|&d| {
                    i64::try_from(d).map_err(|_| invalid(format!("dimension {d} is too large")))
                })
                .collect::<Result<_, _>>()?;
            if shape.len() != want.len() || shape.iter().zip(want).any(|(&d, &w)| w >= 0 && d != w)
            {
                return Err(invalid(format!(
                    "input {name:?} has shape {shape:?}, the model wants {want:?} (-1: any)"
                )));
            }
            let elems: i64 = shape.iter().product();
            if elems as usize != t.data.len() {
                return Err(invalid(format!(
                    "input {name:?}: shape {shape:?} holds {elems} elements, the data has {}",
                    t.data.len()
                )));
            }
            let view: Result<ort::session::SessionInputValue<'_>, ort::Error> = match (&t.data, ty)
            {
                (ArchivedTensorData::F32(v), TensorElementType::Float32) => {
                    TensorRef::from_array_view((shape, f32_native(v))).map(Into::into)
                }
                (ArchivedTensorData::I64(v), TensorElementType::Int64) => {
                    TensorRef::from_array_view((shape, i64_native(v))).map(Into::into)
                }
                (ArchivedTensorData::I32(v), TensorElementType::Int32) => {
                    TensorRef::from_array_view((shape, i32_native(v))).map(Into::into)
                }
                (ArchivedTensorData::U8(v), TensorElementType::Uint8) => {
                    TensorRef::from_array_view((shape, v.as_slice())).map(Into::into)
                }
                (d, ty) => {
                    let got = match d {
                        ArchivedTensorData::F32(_) => "f32",
                        ArchivedTensorData::I64(_) => "i64",
                        ArchivedTensorData::I32(_) => "i32",
                        ArchivedTensorData::U8(_) => "u8",
                    };
                    return Err(invalid(format!(
                        "input {name:?} is {got}, the model wants {ty:?}"
                    )));
                }
            };
            inputs.push((name, view.map_err(|e| BackendError::Failed(e.to_string()))?));
        }
        if let Some((missing, ..)) = self
            .inputs
            .iter()
            .find(|(n, ..)| !ts.iter().any(|t| t.name.as_str() == n))
        {
            return Err(invalid(format!("input {missing:?} is missing")));
        }
        let mut guard = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = guard
            .0
            .run(inputs)
            .map_err(|e| BackendError::Failed(e.to_string()))?;
        let named: Vec<(&str, ort::value::ValueRef<'_>)> = outputs.iter().collect();
        let mut payload = 0;
        for (name, v) in &named {
            let Some(ValueType::Tensor { ty, shape, .. }) = Some(v.dtype()) else {
                return Err(BackendError::Failed(format!(
                    "output {name:?} is not a tensor"
                )));
            };
            let n = shape.num_elements();
            payload += match ty {
                TensorElementType::Float32 => TensorsWriter::bytes_for::<f32>(name, shape.len(), n),
                TensorElementType::Int64 => TensorsWriter::bytes_for::<i64>(name, shape.len(), n),
                TensorElementType::Int32 => TensorsWriter::bytes_for::<i32>(name, shape.len(), n),
                TensorElementType::Uint8 | TensorElementType::Bool => {
                    TensorsWriter::bytes_for::<u8>(name, shape.len(), n)
                }
                other => {
                    return Err(BackendError::Failed(format!(
                    "output {name:?} has element type {other:?}, which the protocol does not carry"
                )))
                }
            };
        }
        out.tensors(payload, |w| {
            for (name, v) in &named {
                let failed = |e: ort::Error| BackendError::Failed(format!("output {name:?}: {e}"));
                let ValueType::Tensor { ty, shape, .. } = v.dtype() else {
                    unreachable!("checked above");
                };
                let dims: Vec<u64> = shape.iter().map(|&d| d.max(0) as u64).collect();
                match ty {
                    TensorElementType::Float32 => copy_output::<f32>(w, name, &dims, v)?,
                    TensorElementType::Int64 => copy_output::<i64>(w, name, &dims, v)?,
                    TensorElementType::Int32 => copy_output::<i32>(w, name, &dims, v)?,
                    TensorElementType::Uint8 => copy_output::<u8>(w, name, &dims, v)?,
                    TensorElementType::Bool => {
                        let (_, d) = v.try_extract_tensor::<bool>().map_err(failed)?;
                        w.add::<u8, BackendError>(name, &dims, |o| {
                            o.iter_mut().zip(d).for_each(|(o, &b)| *o = u8::from(b));
                            Ok(())
                        })?;
                    }
                    _ => unreachable!("checked above"),
                }
            }
            Ok(())
        })
    }
}

/// Copies output `v`, of element type `T`, into the answer as tensor `name` (the one copy a
/// `tensors` answer makes).
fn copy_output<T: Elem + PrimitiveTensorElementType + std::fmt::Debug>(
    w: &mut TensorsWriter<'_>,
    name: &str,
    dims: &[u64],
    v: &DynValue,
) -> Result<(), BackendError> {
    let (_, d) = v
        .try_extract_tensor::<T>()
        .map_err(|e| BackendError::Failed(format!("output {name:?}: {e}")))?;
    w.add::<T, BackendError>(name, dims, |o| {
        o.copy_from_slice(d);
        Ok(())
    })
}
