//! CPU lists in the kernel's `cpulist` form: `0-3,8,10-11`.

/// What is wrong with a CPU list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// An item is neither `N` nor `A-B`.
    #[error("{0:?} is not a CPU number or a range A-B")]
    Item(String),
    /// A range ends before it starts.
    #[error("range {0:?} ends before it starts")]
    Reversed(String),
    /// A CPU number is not below the limit.
    #[error("CPU {cpu} is out of range (at most {max})")]
    TooLarge { cpu: u32, max: u32 },
}

/// The CPUs of `text` in ascending order, each once: comma-separated numbers and inclusive
/// ranges `A-B`, surrounding white space ignored, empty text for no CPUs (as sysfs writes a
/// CPU-less node's `cpulist`). Every CPU must be below `limit`, which bounds the list's size.
pub fn parse_cpu_list(text: &str, limit: u32) -> Result<Vec<u32>, CpuListError> {
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Ok(cpus);
    }
    for item in text.split(',') {
        let item = item.trim();
        let number = |s: &str| {
            let s = s.trim();
            let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            s.parse::<u32>()
                .ok()
                .filter(|_| ok)
                .ok_or_else(|| CpuListError::Item(item.to_string()))
        };
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(item)?, number(item)?),
        };
        if last < first {
            return Err(CpuListError::Reversed(item.to_string()));
        }
        if last >= limit {
            return Err(CpuListError::TooLarge {
                cpu: last,
                max: limit.saturating_sub(1),
            });
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// `cpus` (ascending) in the kernel's short form: `0-3,8`.
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse_in_order_once() {
        assert_eq!(parse_cpu_list("0-3", 8), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("0,2,4-5", 8), Ok(vec![0, 2, 4, 5]));
        assert_eq!(parse_cpu_list("5,1-2,2", 8), Ok(vec![1, 2, 5]));
        assert_eq!(parse_cpu_list(" 0-1\n", 8), Ok(vec![0, 1]));
        assert_eq!(parse_cpu_list("\n", 8), Ok(vec![]));
        assert_eq!(parse_cpu_list("7", 8), Ok(vec![7]));
    }

    #[test]
    fn malformed_reversed_and_too_large_lists_are_refused() {
        for bad in ["a", "1-", "-1", "1,,2", "1-2-3", "+1", "1.5", "0x1"] {
            assert!(
                matches!(parse_cpu_list(bad, 8), Err(CpuListError::Item(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_cpu_list("3-1", 8),
            Err(CpuListError::Reversed("3-1".into()))
        );
        assert_eq!(
            parse_cpu_list("0-4294967295", 8),
            Err(CpuListError::TooLarge {
                cpu: u32::MAX,
                max: 7
            })
        );
        assert!(parse_cpu_list("99999999999", 8).is_err());
    }

    #[test]
    fn lists_print_in_short_form() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(format_cpu_list(&[0, 2, 4, 5]), "0,2,4-5");
        assert_eq!(format_cpu_list(&[]), "");
        for text in ["0-3,8,10-11", "1", "0,2"] {
            assert_eq!(format_cpu_list(&parse_cpu_list(text, 64).unwrap()), text);
        }
    }
}
