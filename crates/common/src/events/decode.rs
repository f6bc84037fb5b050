//! Decoding JSON bytes into a message or request, with an error naming the field at fault.

use std::fmt;

/// Why a message or request body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The field at fault, as a path (`order_details.price`); `None` when the whole body is.
    pub field: Option<String>,
    pub problem: String,
    /// The bytes are not JSON at all (as opposed to JSON of the wrong shape).
    pub syntax: bool,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes JSON bytes into `T`; the error names the field at fault by its path.
pub fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(describe_decode_error)?;
    // Trailing bytes after the value are as bad as a broken value.
    de.end().map_err(|err| DecodeError {
        field: None,
        problem: err.to_string(),
        syntax: true,
    })?;
    Ok(value)
}

fn describe_decode_error(err: serde_path_to_error::Error<serde_json::Error>) -> DecodeError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let syntax = !inner.is_data();
    let mut problem = inner.to_string();
    // serde_json's " at line 1 column 9" helps nobody reading one field's error.
    if !syntax && let Some(i) = problem.rfind(" at line ") {
        problem.truncate(i);
    }
    let mut field = (path != ".").then_some(path);
    // "missing field `price`" belongs to the missing field, not to its parent.
    if let Some(name) = problem
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        field = Some(match field {
            Some(parent) => format!("{parent}.{name}"),
            None => name.to_owned(),
        });
        problem = "missing field".into();
    }
    DecodeError {
        field,
        problem,
        syntax,
    }
}
