//! XEP-0082 date-time parsing, just enough to compare history stamps.

/// Milliseconds since the Unix epoch of a XEP-0082 `CCYY-MM-DDThh:mm:ss[.sss](Z|±hh:mm)`
/// timestamp, or `None` if it is not one.
pub(crate) fn parse_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if rest.first() == Some(&b'.') {
        let frac_len = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac_len == 0 {
            return None;
        }
        let frac = &rest[1..1 + frac_len];
        for i in 0..3 {
            millis = millis * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
        }
        rest = &rest[1 + frac_len..];
    }
    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            let total = h * 60 + m;
            if *sign == b'+' {
                total
            } else {
                -total
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut n = 0i64;
    for c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(c - b'0');
    }
    Some(n)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_millis("1970-01-02T00:00:01.5Z"), Some(86_401_500));
        assert_eq!(parse_millis("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        assert_eq!(parse_millis("2000-03-01T01:00:00+01:00"), Some(951_868_800_000));
        assert_eq!(parse_millis("2000-02-29T23:00:00-01:00"), Some(951_868_800_000));
        assert_eq!(parse_millis("2024-05-06T07:08:09.123456Z"), Some(1_714_979_289_123));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "yesterday",
            "2024-05-06 07:08:09Z",
            "2024-13-06T07:08:09Z",
            "2024-05-06T07:08:09",
            "2024-05-06T07:08:09.Z",
        ] {
            assert_eq!(parse_millis(s), None, "{s}");
        }
    }
}
