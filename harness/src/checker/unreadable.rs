//! Property: the broker serves every position it reports. Violation:
//! `unreadable`: an acknowledged message absent from the drain whose
//! acknowledged position lies in a range the broker reported (below its
//! high watermark, or up to a stream's last sequence) but did not serve
//! while the cluster agreed on its leaders. A range holding no such
//! message still counts once: the broker claimed what it would not serve.

use super::facts::Facts;
use super::lost;

/// One line per unreadable acknowledged message (in ack order), then one
/// per range that holds none of them.
pub fn check(f: &Facts) -> Vec<String> {
    let absent = lost::absent(f, true);
    let mut out: Vec<String> = absent
        .iter()
        .map(|m| {
            let range = f
                .unreadable_at(m.partition, m.offset)
                .map(ToString::to_string)
                .unwrap_or_default();
            format!(
                "{} at {}/{} acked {:.3}s: {range}",
                m.value, m.partition, m.offset, m.acked_at
            )
        })
        .collect();
    for u in &f.unreadable {
        let holds = absent
            .iter()
            .any(|m| m.partition == u.partition && (u.from..u.to).contains(&m.offset));
        if !holds {
            out.push(format!(
                "{u} (no acknowledged message was acknowledged inside it)"
            ));
        }
    }
    out
}
