//! Named tensors, on the wire both ways: a request's tensor input and a response's tensor output,
//! their elements typed so that archived data stays aligned.

use rkyv::{Archive, Deserialize, Serialize};

/// Element data of a tensor, typed so that archived data stays aligned for its type.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{i64_native, ArchivedTensorData, TensorData};
///
/// let ids = TensorData::I64(vec![101, 2023, 102]);
/// assert_eq!(ids.len(), 3);
/// // Archived, the elements keep their type's alignment: read in place, without a copy.
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&ids)?;
/// let archived = rkyv::access::<ArchivedTensorData, rkyv::rancor::Error>(&bytes)?;
/// let ArchivedTensorData::I64(v) = archived else { panic!("the variant travels") };
/// assert_eq!(i64_native(v), [101, 2023, 102]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// 32-bit signed integers.
    I32(Vec<i32>),
    /// Bytes.
    U8(Vec<u8>),
}

impl TensorData {
    /// Number of elements.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::TensorData;
    ///
    /// let pixels = TensorData::F32(vec![0.5; 3 * 224 * 224]);
    /// assert_eq!(pixels.len(), 150_528); // elements, not bytes
    /// ```
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::TensorData;
    ///
    /// assert!(TensorData::U8(Vec::new()).is_empty());
    /// assert!(!TensorData::I32(vec![0]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ArchivedTensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ArchivedTensorData::F32(v) => v.len(),
            ArchivedTensorData::I64(v) => v.len(),
            ArchivedTensorData::I32(v) => v.len(),
            ArchivedTensorData::U8(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A named tensor with its shape.
///
/// # Examples
///
/// ```
/// # use shm_runtime::protocol::{access_request, check_request, Input, Limits, Params, Refusal};
/// # use shm_runtime::protocol::{Request, Task};
/// # /// Validates a tensors request of `t` as a server does.
/// # fn check(t: Tensor) -> Result<(), Refusal> {
/// #     let input = Input::Tensors(vec![t]);
/// #     let params = Params::default();
/// #     let req = Request { id: 1, model: "mlp".into(), task: Task::Tensors, input, params };
/// #     let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap();
/// #     check_request(access_request(&bytes)?, &Limits::default())
/// # }
/// use shm_runtime::protocol::{Tensor, TensorData};
///
/// let x = Tensor { name: "x".into(), shape: vec![2, 3], data: TensorData::F32(vec![0.0; 6]) };
/// assert!(check(x.clone()).is_ok());
/// // The shape must hold exactly the elements given.
/// let wrong = Tensor { shape: vec![4, 4], ..x };
/// assert!(check(wrong).unwrap_err().message.contains("shape holds 16 elements, data has 6"));
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Tensor {
    /// Input or output name in the model.
    pub name: String,
    /// Dimensions; their product equals the element count.
    pub shape: Vec<u64>,
    /// The elements, row-major.
    pub data: TensorData,
}
