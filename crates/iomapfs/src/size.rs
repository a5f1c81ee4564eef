//! Byte sizes on the command line: `4096`, `512K`, `8G`, `1.5GiB`, and back to words.

/// Parses a size: a number with an optional binary suffix (K, M, G, T, with or without `iB`
/// or `B`; powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in size {s:?} (use K, M, G or T)"
            ))
        }
    };
    if num.is_empty() {
        return Err(format!("size {s:?} has no number"));
    }
    let bytes = if num.contains('.') {
        let v: f64 = num
            .parse()
            .map_err(|_| format!("size {s:?} is not a number"))?;
        let b = v * (1u64 << shift) as f64;
        if !b.is_finite() || b >= u64::MAX as f64 {
            return Err(format!("size {s:?} is too large"));
        }
        b as u64
    } else {
        let v: u64 = num
            .parse()
            .map_err(|_| format!("size {s:?} is not a number"))?;
        v.checked_shl(shift)
            .filter(|b| b >> shift == v)
            .ok_or_else(|| format!("size {s:?} is too large"))?
    };
    Ok(bytes)
}

/// A byte count in the largest binary unit that keeps it at or above 1.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size(" 2 M "), Ok(2 << 20));
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        assert!(parse_size("").unwrap_err().contains("no number"));
        assert!(parse_size("G").unwrap_err().contains("no number"));
        assert!(parse_size("12Q").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1.2.3M").unwrap_err().contains("not a number"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn human_sizes_pick_the_largest_unit() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(8 << 30), "8.0 GiB");
    }
}
