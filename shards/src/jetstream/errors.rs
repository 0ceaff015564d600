//! JetStream API errors: nats-server's `code`, `err_code` and description,
//! from the table `build.rs` generates out of `errors.json`.

use serde::ser::SerializeStruct;

/// One entry of nats-server's error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind {
    /// nats-server's Go constant, e.g. `JSStreamNotFoundErr`.
    pub constant: &'static str,
    /// The HTTP-like status (400, 404, 500, 503).
    pub code: u16,
    /// JetStream's own error number.
    pub err_code: u16,
    /// The text, with `{name}` placeholders where nats-server fills one in.
    pub description: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/api_errors.rs"));

/// An error as a JetStream API response carries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Deserialize)]
#[error("{description} (err_code {err_code})")]
pub struct ApiError {
    pub code: u16,
    #[serde(default)]
    pub err_code: u16,
    #[serde(default)]
    pub description: String,
}

impl ErrorKind {
    /// The error with its description as the table has it.
    pub fn error(self) -> ApiError {
        ApiError {
            code: self.code,
            err_code: self.err_code,
            description: self.description.to_string(),
        }
    }

    /// The error with each `{name}` placeholder replaced by its value.
    pub fn with(self, fills: &[(&str, &dyn std::fmt::Display)]) -> ApiError {
        let mut description = self.description.to_string();
        for (name, value) in fills {
            description = description.replace(&format!("{{{name}}}"), &value.to_string());
        }
        ApiError {
            code: self.code,
            err_code: self.err_code,
            description,
        }
    }

    /// `{err}` filled with `err`: the many errors that wrap a cause.
    pub fn err(self, err: impl std::fmt::Display) -> ApiError {
        self.with(&[("err", &err)])
    }
}

impl From<ErrorKind> for ApiError {
    fn from(kind: ErrorKind) -> Self {
        kind.error()
    }
}

impl serde::Serialize for ApiError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ApiError", 3)?;
        st.serialize_field("code", &self.code)?;
        st.serialize_field("err_code", &self.err_code)?;
        st.serialize_field("description", &self.description)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_nats_servers() {
        assert_eq!(
            STREAM_NOT_FOUND,
            ErrorKind {
                constant: "JSStreamNotFoundErr",
                code: 404,
                err_code: 10059,
                description: "stream not found"
            }
        );
        let e = STREAM_WRONG_LAST_SEQUENCE.with(&[("seq", &10)]);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":400,"err_code":10071,"description":"wrong last sequence: 10"}"#
        );
        assert_eq!(INVALID_JSON.err("eof").description, "invalid JSON: eof");
    }
}
