//! Typed values of the command line: clap calls these on the text of an argument, and a value
//! they refuse is a usage error (status 2) quoting their sentence.

use std::time::Duration;

use shm_runtime::ring::WaitStrategy;
use shm_runtime::ModelConfig;

/// A duration: a number with a unit (`ns`, `us`, `ms`, `s`, `m`, `h`), or a plain number of
/// seconds; fractions allowed (`1.5s`, `250ms`, `5`).
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 5s, 250ms or 1.5"))?;
    let seconds_per = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ns, us, ms, s, m or h (a plain number is seconds)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * seconds_per)
        .map_err(|_| format!("{text:?} is not a duration this command can wait"))
}

/// A model as `NAME=BACKEND` (`echo=echo`, `slow=sleep`).
pub(crate) fn model(text: &str) -> Result<ModelConfig, String> {
    match text.split_once('=') {
        Some((name, backend)) if !name.is_empty() && !backend.is_empty() => {
            Ok(ModelConfig::new(name, backend))
        }
        _ => Err(format!(
            "{text:?} is not NAME=BACKEND (for example echo=echo; built-in backends: echo, sleep)"
        )),
    }
}

/// A wait strategy: `busy`, `yield`, `park` or `park:MICROS`.
pub(crate) fn wait(text: &str) -> Result<WaitStrategy, String> {
    shm_runtime::config::parse_wait(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_are_seconds() {
        assert_eq!(duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("20us"), Ok(Duration::from_micros(20)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(duration("ms").unwrap_err().contains("not a duration"));
        assert!(duration("-1s").is_err());
    }

    #[test]
    fn models_are_name_equals_backend() {
        let m = model("slow=sleep").unwrap();
        assert_eq!((m.name.as_str(), m.backend.as_str()), ("slow", "sleep"));
        assert!(model("echo").unwrap_err().contains("NAME=BACKEND"));
        assert!(model("=echo").is_err());
    }
}
