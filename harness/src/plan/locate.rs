//! Finds where a key path (`topic.replication_factor`, `faults[2].at`)
//! stands in a plan's text, so that errors found after parsing still name a
//! line and column. Serde keeps no positions; this scans the YAML text,
//! following block and flow mappings and block sequences. It is a best
//! effort: when a step is not found, the deepest position found is used.

/// 1-based (line, column) of the path's last key found, if any.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let mut pos = 0usize;
    let mut found = None;
    let mut indent_floor: Option<usize> = None;
    for step in split_path(path) {
        match step {
            Step::Key(key) => match find_key(text, pos, key, indent_floor) {
                Some(at) => {
                    indent_floor = Some(column_of(text, at));
                    pos = at + key.len();
                    found = Some(at);
                }
                None => break,
            },
            Step::Index(i) => match find_item(text, pos, i) {
                Some(at) => {
                    indent_floor = None;
                    pos = at + 1;
                    found = Some(at);
                }
                None => break,
            },
        }
    }
    found.map(|at| line_col(text, at))
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part
            .split_once('[')
            .map_or((part, None), |(k, r)| (k, Some(r)));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        if let Some(rest) = rest {
            for idx in rest.split('[') {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    out.push(Step::Index(i));
                }
            }
        }
    }
    out
}

fn column_of(text: &str, at: usize) -> usize {
    at - text[..at].rfind('\n').map_or(0, |i| i + 1)
}

fn line_col(text: &str, at: usize) -> (usize, usize) {
    let line = text[..at].matches('\n').count() + 1;
    (line, column_of(text, at) + 1)
}

/// Next occurrence of `key:` as a mapping key at or after `from`, deeper
/// than the parent key's column when the parent is a block key.
fn find_key(text: &str, from: usize, key: &str, parent_col: Option<usize>) -> Option<usize> {
    let mut search = from;
    while let Some(rel) = text[search..].find(key) {
        let at = search + rel;
        search = at + key.len();
        let before = text[..at].chars().next_back();
        let after = text[at + key.len()..].trim_start_matches([' ', '\t']);
        let boundary = before
            .is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '\n' || c == '-' || c == '"');
        let is_key = after.starts_with(':') || after.starts_with("\":");
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let in_comment = text[line_start..at].contains('#');
        if !(boundary && is_key) || in_comment {
            continue;
        }
        // A key at a column not deeper than its parent's belongs elsewhere.
        let first_on_line = text[line_start..at]
            .trim_start_matches([' ', '-'])
            .is_empty();
        if let (Some(pc), true) = (parent_col, first_on_line) {
            if column_of(text, at) <= pc {
                return None;
            }
        }
        return Some(at);
    }
    None
}

/// The `i`-th block sequence item (`- `) after `from`, at the indentation of
/// the first item found.
fn find_item(text: &str, from: usize, i: usize) -> Option<usize> {
    let mut col = None;
    let mut count = 0;
    let mut line_start = text[..from].rfind('\n').map_or(0, |p| p + 1);
    while line_start < text.len() {
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |p| line_start + p);
        let line = &text[line_start..line_end];
        let trimmed = line.trim_start();
        let c = line.len() - trimmed.len();
        if line_start >= from || text[line_start..from].trim().is_empty() {
            if trimmed.starts_with("- ") || trimmed == "-" {
                match col {
                    None => col = Some(c),
                    Some(k) if k != c => {
                        if c < k {
                            return None;
                        }
                        line_start = line_end + 1;
                        continue;
                    }
                    _ => {}
                }
                if count == i {
                    return Some(line_start + c);
                }
                count += 1;
            } else if let Some(k) = col {
                if !trimmed.is_empty() && !trimmed.starts_with('#') && c <= k {
                    return None;
                }
            }
        }
        line_start = line_end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::locate;

    const PLAN: &str = "name: x\nduration: 10s\ntopic:\n  partitions: 3\n  replication_factor: 5\nproducers: { count: 2, rate: 100/s }\nfaults:\n  - { at: 1s, kill: leader }\n  - at: 99s\n    pause: random\n";

    #[test]
    fn finds_nested_keys_flow_maps_and_list_items() {
        assert_eq!(locate(PLAN, "topic.replication_factor"), Some((5, 3)));
        assert_eq!(locate(PLAN, "producers.rate"), Some((6, 24)));
        assert_eq!(locate(PLAN, "faults[0].kill"), Some((8, 15)));
        assert_eq!(locate(PLAN, "faults[1].at"), Some((9, 5)));
        assert_eq!(locate(PLAN, "faults[1].pause"), Some((10, 5)));
        assert_eq!(locate(PLAN, "consumers.count"), None);
    }
}
