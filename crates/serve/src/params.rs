//! A request's settings: the served stage's keys as defaults, the request's values on top,
//! then the generate stage's own checks (`check_stage_values`), so a value the pipeline file
//! refuses is refused here too, with the field's name as the request spelled it.
//!
//! Values arrive as JSON numbers or strings alike (gpt-2-cloud-run's page sends
//! `"length": "100"` and `"include_prefix": "false"`; its GET API has only strings).

use crate::error::ApiError;
use gptpipe_core::config::{check_stage_values, GenerateParams, StageParams};
use serde_json::{Map, Value};

/// The request's fields, by name, as JSON values (a query string's are all strings).
pub type Fields = Map<String, Value>;

/// Reads `field` as a whole number; `None` when absent or null.
pub fn int(fields: &Fields, field: &str) -> Result<Option<i64>, ApiError> {
    let bad = |v: &Value| ApiError::field(field, format!("must be a whole number, not {v}"));
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9e15 => Ok(Some(f as i64)),
            _ => Err(bad(v)),
        },
        Some(v @ Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

/// Reads `field` as a count (a whole number, not negative).
pub fn count(fields: &Fields, field: &str) -> Result<Option<usize>, ApiError> {
    match int(fields, field)? {
        Some(i) if i < 0 => Err(ApiError::field(
            field,
            format!("must not be negative, not {i}"),
        )),
        Some(i) => Ok(Some(i as usize)),
        None => Ok(None),
    }
}

/// Reads `field` as a finite number.
pub fn float(fields: &Fields, field: &str) -> Result<Option<f64>, ApiError> {
    let bad = |v: &Value| ApiError::field(field, format!("must be a number, not {v}"));
    let f = match fields.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(v @ Value::Number(n)) => n.as_f64().ok_or_else(|| bad(v))?,
        Some(v @ Value::String(s)) => s.trim().parse::<f64>().map_err(|_| bad(v))?,
        Some(v) => return Err(bad(v)),
    };
    if f.is_finite() {
        Ok(Some(f))
    } else {
        Err(ApiError::field(field, format!("must be finite, not {f}")))
    }
}

/// Reads `field` as a boolean: JSON `true`/`false`, or the strings "true"/"false" in any
/// case (what gpt-2-cloud-run's page sends).
pub fn boolean(fields: &Fields, field: &str) -> Result<Option<bool>, ApiError> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(ApiError::field(
            field,
            format!("must be true or false, not {v}"),
        )),
    }
}

/// Reads `field` as text.
pub fn text(fields: &Fields, field: &str) -> Result<Option<String>, ApiError> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::field(field, format!("must be a string, not {v}"))),
    }
}

/// The settings of one request, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub params: GenerateParams,
    /// The request's seed, if it gave one (else the server picks a fresh one).
    pub seed: Option<u64>,
}

/// Maps the generate stage's key names to the names an API uses, for error messages.
pub type Names = &'static [(&'static str, &'static str)];

/// Checks `params` as the generate stage would, plus the server's own limits; errors name
/// the field as the API calls it (`names`: stage key -> API field).
pub fn check(
    params: &GenerateParams,
    names: Names,
    max_length: usize,
    max_batch: usize,
) -> Result<(), ApiError> {
    let name = |key: &str| -> String {
        names
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(key, |(_, api)| api)
            .to_owned()
    };
    if params.length > max_length {
        return Err(ApiError::field(
            &name("length"),
            format!(
                "at most {max_length} tokens on this server (--max-length), not {}",
                params.length
            ),
        ));
    }
    if params.nsamples > max_batch {
        return Err(ApiError::field(
            &name("nsamples"),
            format!(
                "at most {max_batch} samples per request on this server (--max-batch), not {}",
                params.nsamples
            ),
        ));
    }
    check_stage_values(&StageParams::Generate(params.clone())).map_err(|(key, message)| {
        // The stage's messages start with the key's name: say the API's name instead.
        let api = name(key);
        let message = message
            .strip_prefix(key)
            .map_or(message.clone(), |rest| format!("{api}{rest}"));
        ApiError::field(&api, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn numbers_arrive_as_numbers_or_strings() {
        let f = fields(json!({"a": 100, "b": "100", "c": " 7 ", "d": 2.0, "e": "0.5", "f": 0.5}));
        assert_eq!(int(&f, "a").unwrap(), Some(100));
        assert_eq!(int(&f, "b").unwrap(), Some(100));
        assert_eq!(int(&f, "c").unwrap(), Some(7));
        assert_eq!(int(&f, "d").unwrap(), Some(2));
        assert_eq!(float(&f, "e").unwrap(), Some(0.5));
        assert_eq!(float(&f, "f").unwrap(), Some(0.5));
        assert_eq!(int(&f, "missing").unwrap(), None);
    }

    #[test]
    fn bad_values_name_their_field() {
        let f = fields(json!({"length": -1, "temperature": "hot", "top_k": 1.5,
                              "include_prefix": "yes", "prefix": 3}));
        assert_eq!(
            count(&f, "length").unwrap_err().param.as_deref(),
            Some("length")
        );
        let e = float(&f, "temperature").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert!(e.message.contains("\"hot\""), "{}", e.message);
        assert!(int(&f, "top_k").is_err());
        assert!(boolean(&f, "include_prefix").is_err());
        assert!(text(&f, "prefix").is_err());
    }

    #[test]
    fn stage_checks_apply_with_the_api_names() {
        let mut p = GenerateParams {
            top_p: 7.0,
            ..Default::default()
        };
        let e = check(&p, &[], 2000, 4).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_p"));
        p.top_p = 0.0;
        p.length = 5000;
        let e = check(&p, &[("length", "max_tokens")], 2000, 4).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        p.length = 0;
        let e = check(&p, &[("length", "max_tokens")], 2000, 4).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(e.message.starts_with("max_tokens"), "{}", e.message);
    }
}
