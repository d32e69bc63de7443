//! [`Embeddings`]: the answer of an embedding request, read in place in its shared chunk.

use super::typed::unexpected;
use super::ResponseView;
use crate::error::Error;
use crate::protocol::{f32_native, ArchivedBody};

/// Embeddings read in place: one row per text, each of [`dim`](Self::dim) values, in the
/// answer's shared chunk (no copy until [`to_vec`](Self::to_vec)). The chunk returns to the pool
/// when this is dropped.
///
/// # Examples
///
/// ```
/// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
/// # let name = format!("doc-embeddings-{}", std::process::id());
/// # let echo = vec![ModelConfig::new("echo", "echo")];
/// # let _server = Server::start(ServerConfig::new(&name, echo))?;
/// # let client = Client::connect(&name)?;
/// let e = client.embed("echo", &["hi", "yes"])?;
/// // The echo model's "embedding" of a text: its bytes, padded with zeros to the longest.
/// assert_eq!((e.len(), e.dim()), (2, 3));
/// assert_eq!(e.row(1), [121.0, 101.0, 115.0]);
/// for row in &e {
///     let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
///     assert!(norm > 0.0);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Embeddings {
    view: ResponseView,
    /// Where the values start in the chunk, in bytes.
    at: usize,
    rows: usize,
    dim: usize,
}

impl Embeddings {
    pub(super) fn new(view: ResponseView, texts: usize) -> Result<Embeddings, Error> {
        let (values, dim) = match &view.response()?.body {
            ArchivedBody::Embedding(v) => (f32_native(v), v.len()),
            ArchivedBody::Embeddings(e) => (f32_native(&e.values), e.dim.to_native() as usize),
            other => return Err(unexpected("embeddings", other)),
        };
        let rows = values.len().checked_div(dim).unwrap_or(0);
        if rows != texts || rows * dim != values.len() {
            return Err(Error::Protocol(format!(
                "{} values of dimension {dim} answer {texts} texts",
                values.len()
            )));
        }
        let at = values.as_ptr() as usize - view.bytes()?.as_ptr() as usize;
        Ok(Embeddings {
            at,
            rows,
            dim,
            view,
        })
    }

    /// Every value, row after row.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-as-flat-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// let e = client.embed("echo", &["hi", "yes"])?;
    /// // Row after row, straight from the answer's shared chunk.
    /// assert_eq!(e.as_flat(), [104.0, 105.0, 0.0, 121.0, 101.0, 115.0]);
    /// assert_eq!(e.as_flat().len(), e.len() * e.dim());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_flat(&self) -> &[f32] {
        // The chunk is this view's until it drops: its bytes were validated as an archive when
        // this was made and nobody writes them since. A failure here would mean another process
        // took the chunk over, which only a dead client's reclaim does.
        let bytes = self.view.bytes().unwrap_or(&[]);
        bytes
            .get(self.at..self.at + self.rows * self.dim * 4)
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .unwrap_or(&[])
    }

    /// How many rows (one per text).
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-embeddings-len-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// let texts = ["one", "two", "three"];
    /// let e = client.embed("echo", &texts)?;
    /// assert_eq!(e.len(), texts.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether there are no rows.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-embeddings-is-empty-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// let e = client.embed("echo", &["a text"])?;
    /// assert!(!e.is_empty()); // one row per text, and there is at least one text
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The dimension of each row.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-embeddings-dim-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// let e = client.embed("echo", &["four", "six"])?;
    /// assert_eq!(e.dim(), 4);
    /// assert!(e.iter().all(|row| row.len() == e.dim()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`, or `None` past the end.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-embeddings-get-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// let e = client.embed("echo", &["ab"])?;
    /// assert_eq!(e.get(0), Some(&[97.0, 98.0][..]));
    /// assert_eq!(e.get(1), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, i: usize) -> Option<&[f32]> {
        (i < self.rows).then(|| &self.as_flat()[i * self.dim..(i + 1) * self.dim])
    }

    /// Row `i`.
    ///
    /// # Panics
    ///
    /// When `i` is not below [`len`](Self::len).
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-embeddings-row-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// let e = client.embed("echo", &["a cat", "a dog"])?;
    /// let dot: f32 = e.row(0).iter().zip(e.row(1)).map(|(a, b)| a * b).sum();
    /// assert!(dot > 0.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn row(&self, i: usize) -> &[f32] {
        self.get(i).unwrap_or_else(|| {
            panic!("row {i} of {} embeddings", self.rows);
        })
    }

    /// The rows in order.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-embeddings-iter-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// let texts = ["x", "yz"];
    /// let e = client.embed("echo", &texts)?;
    /// for (text, row) in texts.iter().zip(e.iter()) {
    ///     assert_eq!(row[0], f32::from(text.as_bytes()[0]));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.as_flat().chunks_exact(self.dim.max(1))
    }

    /// The rows, copied out of shared memory.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-embeddings-to-vec-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// let e = client.embed("echo", &["ok"])?;
    /// let owned: Vec<Vec<f32>> = e.to_vec();
    /// drop(e); // the answer's chunk goes back to the pool; the copy stays
    /// assert_eq!(owned, [[111.0, 107.0]]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_vec(&self) -> Vec<Vec<f32>> {
        self.iter().map(<[f32]>::to_vec).collect()
    }
}

impl<'a> IntoIterator for &'a Embeddings {
    type Item = &'a [f32];
    type IntoIter = std::slice::ChunksExact<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
