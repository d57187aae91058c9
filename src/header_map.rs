//! The proxy-wasm ABI's serialized header maps, read with bounds checks and written.

use keyward_engine::request::Header;

/// Parses the ABI's serialized map: count, (name length, value length) pairs, then the
/// NUL-terminated names and values. Malformed input is an error, never a panic.
#[cfg(test)]
pub fn parse_header_map(bytes: &[u8]) -> Option<Vec<Header>> {
    let mut headers = Vec::new();
    parse_header_map_into(bytes, &mut headers)?;
    Some(headers)
}

/// [`parse_header_map`] into `headers`, reusing the `String`s and `Vec`s it already holds:
/// read into a recycled list, a map costs no allocation once the list has grown to it (two per
/// header otherwise, on every request). On `None`, `headers` is left empty.
pub fn parse_header_map_into(bytes: &[u8], headers: &mut Vec<Header>) -> Option<()> {
    let parsed = fill(bytes, headers);
    if parsed.is_none() {
        headers.clear();
    }
    parsed
}

fn fill(bytes: &[u8], headers: &mut Vec<Header>) -> Option<()> {
    let read_u32 = |at: usize| -> Option<usize> {
        let slice = bytes.get(at..at.checked_add(4)?)?;
        let array: [u8; 4] = slice.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(array)).ok()
    };
    if bytes.is_empty() {
        headers.clear();
        return Some(());
    }
    let count = read_u32(0)?;
    // Each pair needs at least 10 bytes; a larger count is corrupt.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut sizes_at = 4;
    let mut data_at = 4usize.checked_add(count.checked_mul(8)?)?;
    for index in 0..count {
        let name_len = read_u32(sizes_at)?;
        let value_len = read_u32(sizes_at + 4)?;
        sizes_at += 8;
        let name_end = data_at.checked_add(name_len)?;
        let name = bytes.get(data_at..name_end)?;
        let value_at = name_end.checked_add(1)?;
        let value_end = value_at.checked_add(value_len)?;
        let value = bytes.get(value_at..value_end)?;
        // Names and values are NUL-terminated; a missing terminator means a truncated map.
        if bytes.get(name_end) != Some(&0) || bytes.get(value_end) != Some(&0) {
            return None;
        }
        data_at = value_end.checked_add(1)?;
        let name = core::str::from_utf8(name).ok()?;
        if index == headers.len() {
            headers.push(Header::default());
        }
        let (own_name, own_value) = headers.get_mut(index)?;
        own_name.clear();
        own_name.push_str(name);
        own_name.make_ascii_lowercase();
        own_value.clear();
        own_value.extend_from_slice(value);
    }
    headers.truncate(count);
    Some(())
}

/// Overwrites every value with zeros before a list is kept for reuse: a recycled list must not
/// hold the last request's credential longer than a freed one would.
pub fn wipe_values(headers: &mut [Header]) {
    for (_, value) in headers {
        value.fill(0);
    }
}

pub fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let count = u32::try_from(pairs.len()).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&count.to_le_bytes());
    for (name, value) in pairs {
        bytes.extend_from_slice(&u32::try_from(name.len()).unwrap_or(0).to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_le_bytes());
    }
    for (name, value) in pairs {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_lowercases_names() {
        let bytes = serialize_pairs(&[(":path", "/x"), ("X-Api-Key", "k"), ("empty", "")]);
        let parsed = parse_header_map(&bytes).expect("valid map");
        assert_eq!(
            parsed,
            vec![
                (":path".to_owned(), b"/x".to_vec()),
                ("x-api-key".to_owned(), b"k".to_vec()),
                ("empty".to_owned(), Vec::new()),
            ]
        );
    }

    #[test]
    fn a_recycled_list_reads_the_next_map_whole_and_nothing_of_the_last() {
        let first = serialize_pairs(&[
            (":path", "/first"),
            ("authorization", "Bearer secret-1"),
            ("X-A", "1"),
        ]);
        let second = serialize_pairs(&[(":path", "/s"), ("B", "22")]);
        let mut list = Vec::new();
        parse_header_map_into(&first, &mut list).expect("valid map");
        wipe_values(&mut list);
        assert!(list.iter().all(|(_, value)| value.iter().all(|&b| b == 0)));
        parse_header_map_into(&second, &mut list).expect("valid map");
        assert_eq!(list, parse_header_map(&second).expect("valid map"));
        assert_eq!(
            list,
            vec![
                (":path".to_owned(), b"/s".to_vec()),
                ("b".to_owned(), b"22".to_vec())
            ]
        );
        // A longer map after a shorter one grows the list; a corrupt one leaves it empty.
        parse_header_map_into(&first, &mut list).expect("valid map");
        assert_eq!(list, parse_header_map(&first).expect("valid map"));
        assert_eq!(
            parse_header_map_into(&first[..first.len() - 1], &mut list),
            None
        );
        assert!(list.is_empty());
    }

    #[test]
    fn corrupt_maps_are_errors_not_panics() {
        let good = serialize_pairs(&[("a", "b")]);
        for cut in 1..good.len() {
            assert_eq!(parse_header_map(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse_header_map(&u32::MAX.to_le_bytes()), None);
        assert_eq!(parse_header_map(&[]), Some(Vec::new()));
    }
}
