//! Backend options: the plain values a model's `options = { ... }` table holds, each backend
//! reading and checking its own.

use serde::Deserialize;

/// A model's backend options by name, as a configuration file's `options = { ... }` gives them.
///
/// # Examples
///
/// ```
/// use shm_runtime::config::{OptionValue, Options};
/// use shm_runtime::ModelConfig;
///
/// let mut options = Options::new();
/// options.insert("step_ms".into(), OptionValue::Float(2.5));
/// options.insert("slots".into(), OptionValue::Integer(4));
/// let model = ModelConfig { options, ..ModelConfig::new("steps", "sleep") };
/// assert_eq!(model.options["slots"].as_integer(), Some(4));
/// ```
pub type Options = std::collections::BTreeMap<String, OptionValue>;

/// The value of one backend option: the plain values a configuration file can hold.
///
/// # Examples
///
/// ```
/// use shm_runtime::config::OptionValue;
///
/// // What `options = { pooling = "cls", labels = ["neg", "pos"] }` reads as:
/// let pooling = OptionValue::from("cls");
/// let labels = OptionValue::from(vec!["neg", "pos"]);
/// assert_eq!(pooling, OptionValue::String("cls".into()));
/// assert_eq!(labels.as_array().map(<[_]>::len), Some(2));
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OptionValue {
    /// `true` or `false`.
    Boolean(bool),
    /// A whole number.
    Integer(i64),
    /// A number with a fraction.
    Float(f64),
    /// Text.
    String(String),
    /// A list of values.
    Array(Vec<OptionValue>),
}

impl OptionValue {
    /// The boolean, if it is one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// assert_eq!(OptionValue::from(true).as_bool(), Some(true));
    /// assert_eq!(OptionValue::from("yes").as_bool(), None);
    /// ```
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            OptionValue::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The whole number, if it is one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// assert_eq!(OptionValue::from(4_i64).as_integer(), Some(4));
    /// assert_eq!(OptionValue::from(4.0).as_integer(), None);
    /// ```
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            OptionValue::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The number with a fraction, if it is one (a whole number is not: see [`as_number`]).
    ///
    /// [`as_number`]: OptionValue::as_number
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// assert_eq!(OptionValue::from(2.5).as_float(), Some(2.5));
    /// assert_eq!(OptionValue::from(2_i64).as_float(), None);
    /// ```
    pub fn as_float(&self) -> Option<f64> {
        match self {
            OptionValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Any number, whole or not.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// // `step_ms = 2` and `step_ms = 2.0` both read as 2 ms.
    /// assert_eq!(OptionValue::from(2_i64).as_number(), Some(2.0));
    /// assert_eq!(OptionValue::from(2.0).as_number(), Some(2.0));
    /// assert_eq!(OptionValue::from("2").as_number(), None);
    /// ```
    pub fn as_number(&self) -> Option<f64> {
        match self {
            OptionValue::Float(f) => Some(*f),
            OptionValue::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The text, if it is text.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// assert_eq!(OptionValue::from("mean").as_str(), Some("mean"));
    /// assert_eq!(OptionValue::from(1_i64).as_str(), None);
    /// ```
    pub fn as_str(&self) -> Option<&str> {
        match self {
            OptionValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The list, if it is one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// let labels = OptionValue::from(vec!["neg", "pos"]);
    /// let items = labels.as_array().unwrap_or_default();
    /// let names: Vec<&str> = items.iter().filter_map(OptionValue::as_str).collect();
    /// assert_eq!(names, ["neg", "pos"]);
    /// assert_eq!(OptionValue::from("neg").as_array(), None);
    /// ```
    pub fn as_array(&self) -> Option<&[OptionValue]> {
        match self {
            OptionValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl From<bool> for OptionValue {
    fn from(v: bool) -> Self {
        OptionValue::Boolean(v)
    }
}

impl From<i64> for OptionValue {
    fn from(v: i64) -> Self {
        OptionValue::Integer(v)
    }
}

impl From<f64> for OptionValue {
    fn from(v: f64) -> Self {
        OptionValue::Float(v)
    }
}

impl From<&str> for OptionValue {
    fn from(v: &str) -> Self {
        OptionValue::String(v.to_owned())
    }
}

impl From<String> for OptionValue {
    fn from(v: String) -> Self {
        OptionValue::String(v)
    }
}

impl<T: Into<OptionValue>> From<Vec<T>> for OptionValue {
    fn from(v: Vec<T>) -> Self {
        OptionValue::Array(v.into_iter().map(Into::into).collect())
    }
}
