//! Typed values of the configuration language (reference §6.1 "Value types"): numbers, booleans,
//! octal modes, sizes with units and times with units, each parsed with the original's rules and
//! printed the way doveconf prints them.
//!
//! doveconf prints a typed value from the number it parsed, not from the text that was written
//! (Dovecot 2.3.19.1's doveconf, run on these very inputs): `60s` and `60 secs` print as `1 mins`,
//! `7200s` as `2 hours`, `256M` and `256MiB` as `256 M`, `1024k` as `1 M`, `1536` as `1536 B`, a
//! size of 0 as `0`, `Yes` as `yes`, a mode `00644` as `0644` and `0` as `00`, a number `0012` as
//! `12`. [`ValueType::normalise`] does the same for `roost config`.

use crate::time::Duration;

/// Parses `yes`/`no` (also `y`/`n`, any case, as the original accepts).
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "y" => Ok(true),
        "no" | "n" => Ok(false),
        _ => Err(format!("Invalid boolean value: {text} (use yes or no)")),
    }
}

/// Parses an unsigned 32-bit number.
pub fn parse_u32(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .map_err(|_| format!("Invalid number: {text}"))
}

/// Parses a port number (0 disables a listener).
pub fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("Invalid port number: {text}"))
}

/// Parses an octal file mode (`0600`, `0666`, `00`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim_start_matches('0');
    if text.is_empty() || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("Invalid file mode (use octal, e.g. 0600): {text}"));
    }
    if digits.is_empty() {
        return Ok(0);
    }
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o7777)
        .ok_or_else(|| format!("Invalid file mode (use octal, e.g. 0600): {text}"))
}

/// Splits `256M`, `256 M`, `60 secs` into the number and the unit.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    if end == 0 {
        return None;
    }
    let number = text[..end].parse::<u64>().ok()?;
    Some((number, text[end..].trim()))
}

/// Parses a size: a number with an optional unit B, K, M, G or T (an `i` and a `B` may follow:
/// `KiB`, `MB`). A bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("Invalid size: {text}");
    let (number, unit) = split_number(text).ok_or_else(invalid)?;
    let unit = unit.to_ascii_uppercase();
    let unit = unit.strip_suffix('B').unwrap_or(&unit);
    let unit = unit.strip_suffix('I').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("Size is too large: {text}"))
}

/// Prints a size as doveconf does: the largest unit that divides it (`256 M`, `1 k`,
/// `18446744073709551615 B`), and 0 as `0`.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "k")] {
        let size = 1u64 << shift;
        if bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} B")
}

/// Parses a time: a number with a unit (`ms`, `s`/`sec`/`secs`/`seconds`, `m`/`min`/`mins`/
/// `minutes`, `h`/`hours`, `d`/`days`, `w`/`weeks`). A non-zero number without a unit is an
/// error, as in the original; milliseconds must make whole seconds.
pub fn parse_time(text: &str) -> Result<Duration, String> {
    let (number, unit) =
        split_number(text).ok_or_else(|| format!("Invalid time interval: {text}"))?;
    let seconds_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "" if number == 0 => 1,
        "" => {
            return Err(format!(
                "Time interval '{text}' is missing units (add e.g. s)"
            ))
        }
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => {
            if !number.is_multiple_of(1000) {
                return Err(format!("Time interval '{text}' must be in whole seconds"));
            }
            return Ok(Duration::from_secs(number / 1000));
        }
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        _ => return Err(format!("Invalid time interval unit in '{text}'")),
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("Time interval is too large: {text}"))
}

/// Prints a time as doveconf does: `1 mins`, `4294967295 secs`, `0`.
pub fn format_time(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 {
        return "0".to_owned();
    }
    for (size, unit) in [
        (604_800, "weeks"),
        (86_400, "days"),
        (3_600, "hours"),
        (60, "mins"),
    ] {
        if secs.is_multiple_of(size) {
            return format!("{} {unit}", secs / size);
        }
    }
    format!("{secs} secs")
}

/// Prints a file mode as doveconf does: octal with a leading 0 (`0600`, and `00` for 0).
pub fn format_mode(mode: u32) -> String {
    format!("0{mode:o}")
}

/// Prints a boolean as doveconf does.
pub fn format_bool(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// The type of a setting whose value is not a plain string, for printing it as doveconf does.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// An unsigned 32-bit number (`process_limit`).
    Number,
    /// A port number.
    Port,
    /// `yes` or `no`.
    Bool,
    /// An octal file mode.
    Mode,
    /// A time with a unit.
    Time,
    /// A size with a unit.
    Size,
}

impl ValueType {
    /// The value in doveconf's form, or `None` when the text does not parse as this type (a
    /// `$variable`, or a value the configuration already refuses): such a text is printed as
    /// written.
    pub fn normalise(self, text: &str) -> Option<String> {
        match self {
            ValueType::Number => parse_u32(text).ok().map(|n| n.to_string()),
            ValueType::Port => parse_port(text).ok().map(|n| n.to_string()),
            ValueType::Bool => parse_bool(text).ok().map(|b| format_bool(b).to_owned()),
            ValueType::Mode => parse_mode(text).ok().map(format_mode),
            ValueType::Time => parse_time(text).ok().map(format_time),
            ValueType::Size => parse_size(text).ok().map(format_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_print_like_doveconf() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256 M"), Ok(256 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
        assert_eq!(parse_size("18446744073709551615 B"), Ok(u64::MAX));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("17 X"), Err("Invalid size: 17 X".to_owned()));
        assert_eq!(
            parse_size("99999999999 T"),
            Err("Size is too large: 99999999999 T".to_owned())
        );
        assert_eq!(format_size(256 << 20), "256 M");
        assert_eq!(format_size(u64::MAX), "18446744073709551615 B");
        assert_eq!(
            format_size(0),
            "0",
            "doveconf prints a size of 0 without a unit"
        );
    }

    #[test]
    fn times_need_units_unless_zero() {
        assert_eq!(parse_time("60 secs"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_time("1 min"), Ok(Duration::from_secs(60)));
        assert_eq!(
            parse_time("4294967295 secs"),
            Ok(Duration::from_secs(4_294_967_295))
        );
        assert_eq!(parse_time("2 weeks"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(parse_time("5000 ms"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_time("0"), Ok(Duration::ZERO));
        assert_eq!(
            parse_time("60"),
            Err("Time interval '60' is missing units (add e.g. s)".to_owned())
        );
        assert_eq!(
            parse_time("1500 ms"),
            Err("Time interval '1500 ms' must be in whole seconds".to_owned())
        );
        assert_eq!(
            parse_time("secs"),
            Err("Invalid time interval: secs".to_owned())
        );
        assert_eq!(format_time(Duration::from_secs(60)), "1 mins");
        assert_eq!(
            format_time(Duration::from_secs(4_294_967_295)),
            "4294967295 secs"
        );
    }

    #[test]
    fn modes_are_octal_and_booleans_are_words() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("00"), Ok(0));
        assert_eq!(parse_mode("0666"), Ok(0o666));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("").is_err());
        assert_eq!(parse_bool("yes"), Ok(true));
        assert_eq!(parse_bool("No"), Ok(false));
        assert!(parse_bool("maybe").is_err());
        assert_eq!(parse_u32("100"), Ok(100));
        assert!(parse_u32("-1").is_err());
        assert!(parse_port("70000").is_err());
    }

    /// Each pair is what was written and what doveconf 2.3.19.1 printed for it.
    fn normalises(value_type: ValueType, pairs: &[(&str, &str)]) {
        for (written, printed) in pairs {
            assert_eq!(
                value_type.normalise(written).as_deref(),
                Some(*printed),
                "{value_type:?} {written:?}"
            );
        }
    }

    #[test]
    fn times_print_in_the_largest_unit_that_divides_them() {
        normalises(
            ValueType::Time,
            &[
                ("60s", "1 mins"),
                ("60 secs", "1 mins"),
                ("61s", "61 secs"),
                ("1sec", "1 secs"),
                ("2seconds", "2 secs"),
                ("3600s", "1 hours"),
                ("7200s", "2 hours"),
                ("90 mins", "90 mins"),
                ("1M", "1 mins"),
                ("1minute", "1 mins"),
                ("10min", "10 mins"),
                ("1hour", "1 hours"),
                ("3h", "3 hours"),
                ("86400s", "1 days"),
                ("1 day", "1 days"),
                ("14d", "2 weeks"),
                ("604800s", "1 weeks"),
                ("1 week", "1 weeks"),
                ("7weeks", "7 weeks"),
                ("5000ms", "5 secs"),
                ("1000milliseconds", "1 secs"),
                ("0", "0"),
                ("0s", "0"),
                ("4294967295s", "4294967295 secs"),
            ],
        );
    }

    #[test]
    fn sizes_print_in_the_largest_binary_unit_that_divides_them() {
        normalises(
            ValueType::Size,
            &[
                ("256M", "256 M"),
                ("64MiB", "64 M"),
                ("5 G", "5 G"),
                ("1024k", "1 M"),
                ("1536k", "1536 k"),
                ("1KB", "1 k"),
                ("1kb", "1 k"),
                ("1536", "1536 B"),
                ("3b", "3 B"),
                ("2048G", "2 T"),
                ("1T", "1 T"),
                ("1024T", "1024 T"),
                ("0", "0"),
                ("0B", "0"),
                ("18446744073709551615 B", "18446744073709551615 B"),
            ],
        );
    }

    #[test]
    fn booleans_print_as_yes_or_no() {
        normalises(
            ValueType::Bool,
            &[
                ("yes", "yes"),
                ("Yes", "yes"),
                ("YES", "yes"),
                ("y", "yes"),
                ("no", "no"),
                ("No", "no"),
                ("NO", "no"),
                // roost also accepts `n`, which the original refuses.
                ("n", "no"),
            ],
        );
    }

    #[test]
    fn modes_print_in_octal_with_one_leading_zero() {
        normalises(
            ValueType::Mode,
            &[
                ("0600", "0600"),
                ("00644", "0644"),
                ("000644", "0644"),
                ("0777", "0777"),
                ("04755", "04755"),
                ("0", "00"),
                ("00", "00"),
            ],
        );
    }

    #[test]
    fn numbers_and_ports_print_without_leading_zeros() {
        normalises(
            ValueType::Number,
            &[("0012", "12"), ("007", "7"), ("1024", "1024"), ("0", "0")],
        );
        normalises(
            ValueType::Port,
            &[("0110", "110"), ("00", "0"), ("143", "143")],
        );
    }

    #[test]
    fn what_does_not_parse_is_not_normalised() {
        for (value_type, text) in [
            (ValueType::Time, "$default_idle_kill"),
            (ValueType::Time, "60"),
            (ValueType::Time, "1500 ms"),
            (ValueType::Time, ""),
            (ValueType::Size, "17 X"),
            (ValueType::Size, "99999999999 T"),
            (ValueType::Size, "$default_vsz_limit"),
            (ValueType::Mode, "0800"),
            (ValueType::Mode, "077777"),
            (ValueType::Mode, ""),
            (ValueType::Bool, "maybe"),
            (ValueType::Bool, ""),
            (ValueType::Number, "-1"),
            (ValueType::Number, "4294967296"),
            (ValueType::Port, "70000"),
        ] {
            assert_eq!(value_type.normalise(text), None, "{value_type:?} {text:?}");
        }
    }
}
