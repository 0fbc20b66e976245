//! Typed values of the configuration language (reference §6.1 "Value types"): numbers, booleans,
//! octal modes, sizes with units and times with units, each parsed with the original's rules and
//! printed the way doveconf prints them.

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

/// Prints a size as doveconf does: the largest unit that divides it (`256 M`, `18446744073709551615 B`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "k")] {
        let size = 1u64 << shift;
        if bytes != 0 && bytes.is_multiple_of(size) {
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
        assert_eq!(format_size(0), "0 B");
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
}
