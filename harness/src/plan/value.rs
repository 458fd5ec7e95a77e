//! Parsers for the scalar forms plans use: durations ("10s", "1500ms",
//! "2m"), rates ("2000/s"), ranges ("64..1024", "5s..15s") and fault
//! targets ("leader", "leader:2", "minority", "nodes:1,3", "2").

use std::time::Duration;

/// The longest duration a plan may give anywhere (a week).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The lowest and highest producer rate a plan may give, per second.
pub const MIN_RATE: f64 = 1.0 / 60.0;
pub const MAX_RATE: f64 = 10_000_000.0;

/// Parses "250ms", "10s", "1.5s", "2m", "1h"; at most `MAX_DURATION`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| t.split_at(i))
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m or h), e.g. \"10s\""))?;
    let n: f64 = num.trim().parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number and a unit, e.g. \"1500ms\"")
    })?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "invalid duration {s:?}: too long (at most 168h, a week)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses "2000/s" or "120/m" into messages per second.
pub fn rate(s: &str) -> Result<f64, String> {
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("invalid rate {s:?}: expected N/s, e.g. \"2000/s\""))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("invalid rate {s:?}: {n:?} is not a number"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("invalid rate {s:?}: must be positive"));
    }
    let per_second = match per.trim() {
        "s" => n,
        "m" => n / 60.0,
        other => {
            return Err(format!(
                "invalid rate {s:?}: unknown unit /{other} (use /s or /m)"
            ))
        }
    };
    if !(MIN_RATE..=MAX_RATE).contains(&per_second) {
        return Err(format!(
            "invalid rate {s:?}: must be between 1/m and 10000000/s"
        ));
    }
    Ok(per_second)
}

/// Checks that every `{name}` in `arg` is one of `known` and that every
/// `{` is closed.
pub fn check_placeholders(arg: &str, known: &[&str]) -> Result<(), String> {
    let list = || {
        known
            .iter()
            .map(|k| format!("{{{k}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!(
                "unclosed placeholder in {arg:?}: placeholders are {}",
                list()
            ));
        };
        let name = &after[..close];
        if !known.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} in {arg:?}: placeholders are {}",
                list()
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Parses "A..B" with both ends inclusive, or a single value as A..A.
pub fn range<T: PartialOrd + Copy + std::fmt::Debug>(
    s: &str,
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, T), String> {
    match s.split_once("..") {
        None => {
            let v = one(s)?;
            Ok((v, v))
        }
        Some((a, b)) => {
            let (a, b) = (
                one(a.trim())?,
                one(b.trim().trim_start_matches('=').trim())?,
            );
            if a > b {
                return Err(format!("invalid range {s:?}: the start is above the end"));
            }
            Ok((a, b))
        }
    }
}

/// Whom a fault hits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The leader of a partition (the given one, or one drawn from the seed).
    Leader(Option<i32>),
    /// A replica of a partition that is not its leader.
    Follower(Option<i32>),
    /// One node drawn from the seed.
    Random,
    /// A random minority (fewer than half) of the nodes.
    Minority,
    /// A random majority of the nodes.
    Majority,
    /// Every node.
    All,
    /// These node ids.
    Nodes(Vec<u32>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Leader(None) => write!(f, "leader"),
            Target::Leader(Some(p)) => write!(f, "leader:{p}"),
            Target::Follower(None) => write!(f, "follower"),
            Target::Follower(Some(p)) => write!(f, "follower:{p}"),
            Target::Random => write!(f, "random"),
            Target::Minority => write!(f, "minority"),
            Target::Majority => write!(f, "majority"),
            Target::All => write!(f, "all"),
            Target::Nodes(n) => write!(
                f,
                "nodes:{}",
                n.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ),
        }
    }
}

impl Target {
    /// How many of `nodes` nodes the target names when it acts.
    pub fn size(&self, nodes: u32) -> u32 {
        match self {
            Target::All => nodes,
            Target::Nodes(ids) => {
                ids.iter().collect::<std::collections::BTreeSet<_>>().len() as u32
            }
            Target::Random | Target::Leader(_) | Target::Follower(_) => 1,
            Target::Minority => nodes.saturating_sub(1) / 2,
            Target::Majority => nodes / 2 + 1,
        }
    }
}

/// Parses a target; node ids must be in 1..=nodes.
pub fn target(s: &str, nodes: u32) -> Result<Target, String> {
    let node_list = |list: &str| -> Result<Target, String> {
        let mut ids = Vec::new();
        for part in list.split(',') {
            let id: u32 = part
                .trim()
                .parse()
                .map_err(|_| format!("invalid node id {part:?} in target {s:?}"))?;
            if id == 0 || id > nodes {
                return Err(format!(
                    "target {s:?}: node {id} does not exist (nodes are 1..={nodes})"
                ));
            }
            ids.push(id);
        }
        Ok(Target::Nodes(ids))
    };
    let partition = |p: &str| -> Result<Option<i32>, String> {
        p.parse::<i32>()
            .ok()
            .filter(|&p| p >= 0)
            .map(Some)
            .ok_or_else(|| format!("invalid partition {p:?} in target {s:?}"))
    };
    match s.trim() {
        "leader" => Ok(Target::Leader(None)),
        "follower" => Ok(Target::Follower(None)),
        "random" => Ok(Target::Random),
        "minority" => Ok(Target::Minority),
        "majority" => Ok(Target::Majority),
        "all" => Ok(Target::All),
        t => {
            if let Some(p) = t.strip_prefix("leader:") {
                return Ok(Target::Leader(partition(p)?));
            }
            if let Some(p) = t.strip_prefix("follower:") {
                return Ok(Target::Follower(partition(p)?));
            }
            if let Some(list) = t.strip_prefix("nodes:") {
                return node_list(list);
            }
            if t.chars().all(|c| c.is_ascii_digit() || c == ',') && !t.is_empty() {
                return node_list(t);
            }
            Err(format!(
                "unknown target {s:?}: use leader, leader:P, follower, random, minority, majority, all, or node ids like 2 or nodes:1,3"
            ))
        }
    }
}

/// How the nodes are split.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// The leader of a partition (given, or drawn) against the rest.
    IsolateLeader(Option<i32>),
    /// These nodes against the rest.
    Isolate(Vec<u32>),
    /// Two random halves.
    Halves,
    /// Each node sees a majority, no two nodes the same one.
    MajoritiesRing,
    /// Two halves that share one node.
    Bridge,
    /// A cannot reach B; B reaches A (drawn when not given).
    OneWay(Option<(u32, u32)>),
    /// The leader of a partition (given, or drawn) cut off from that
    /// partition's other replicas only; every other link stays (with a
    /// cluster larger than the replica set, the controllers still reach
    /// everyone). Resolved at run time into `Apart`.
    LeaderFromFollowers(Option<i32>),
    /// These nodes cannot reach those, both ways; no other link is cut
    /// (the resolved form of `LeaderFromFollowers`).
    Apart(Vec<u32>, Vec<u32>),
}

impl Shape {
    /// Why this shape cuts no connection among `nodes` nodes, nor (with
    /// `clients`) the clients off a node (None: it cuts something).
    /// `network::cut` is tested to agree.
    pub fn cuts_nothing(&self, nodes: u32, clients: bool) -> Option<String> {
        if clients
            && matches!(
                self,
                Shape::Isolate(_) | Shape::IsolateLeader(_) | Shape::LeaderFromFollowers(_)
            )
        {
            return None;
        }
        let need = |min: u32, what: &str| {
            (nodes < min)
                .then(|| format!("{what} needs at least {min} nodes, the cluster has {nodes}"))
        };
        match self {
            Shape::IsolateLeader(_) => need(2, "isolating the leader"),
            Shape::LeaderFromFollowers(_) => need(2, "cutting the leader from its followers"),
            Shape::Apart(a, b) => {
                (a.is_empty() || b.is_empty()).then(|| "one side of the cut is empty".to_string())
            }
            Shape::Halves => need(2, "halves"),
            Shape::Bridge => need(3, "a bridge"),
            Shape::MajoritiesRing => need(4, "majorities-ring"),
            Shape::OneWay(None) => need(2, "one-way"),
            Shape::OneWay(Some((a, b))) => {
                (a == b).then(|| format!("one-way from node {a} to itself cuts nothing"))
            }
            Shape::Isolate(ids) => {
                let distinct: std::collections::BTreeSet<&u32> = ids.iter().collect();
                (distinct.len() as u32 >= nodes)
                    .then(|| "isolating every node leaves no other side to cut off".to_string())
            }
        }
    }
}

/// Parses a partition shape.
pub fn parse_shape(s: &str, nodes: u32) -> Result<Shape, String> {
    let id = |x: &str| -> Result<u32, String> {
        let n: u32 = x
            .trim()
            .parse()
            .map_err(|_| format!("invalid node id {x:?} in partition {s:?}"))?;
        if n == 0 || n > nodes {
            return Err(format!(
                "partition {s:?}: node {n} does not exist (nodes are 1..={nodes})"
            ));
        }
        Ok(n)
    };
    match s.trim() {
        "isolate-leader" => Ok(Shape::IsolateLeader(None)),
        "leader-from-followers" => Ok(Shape::LeaderFromFollowers(None)),
        "halves" => Ok(Shape::Halves),
        "majorities-ring" => Ok(Shape::MajoritiesRing),
        "bridge" => Ok(Shape::Bridge),
        "one-way" => Ok(Shape::OneWay(None)),
        t => {
            let partition = |p: &str| -> Result<i32, String> {
                p.parse()
                    .ok()
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| format!("invalid partition number in {s:?}"))
            };
            if let Some(p) = t.strip_prefix("isolate-leader:") {
                return Ok(Shape::IsolateLeader(Some(partition(p)?)));
            }
            if let Some(p) = t.strip_prefix("leader-from-followers:") {
                return Ok(Shape::LeaderFromFollowers(Some(partition(p)?)));
            }
            if let Some(list) = t.strip_prefix("isolate:") {
                let ids = list.split(',').map(id).collect::<Result<Vec<_>, _>>()?;
                return Ok(Shape::Isolate(ids));
            }
            if let Some(pair) = t.strip_prefix("one-way:") {
                let (a, b) = pair
                    .split_once('>')
                    .ok_or_else(|| format!("one-way takes A>B, e.g. one-way:1>2, not {s:?}"))?;
                return Ok(Shape::OneWay(Some((id(a)?, id(b)?))));
            }
            Err(format!("unknown partition {s:?}: use isolate-leader, isolate:1,2, leader-from-followers, halves, majorities-ring, bridge, one-way or one-way:1>2"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(duration("10").unwrap_err().contains("needs a unit"));
        assert!(duration("10 seconds").unwrap_err().contains("unknown unit"));
        assert!(duration("-1s").unwrap_err().contains("negative"));
        assert_eq!(duration("168h"), Ok(MAX_DURATION));
        for huge in ["169h", "1000000000000s", "99999999999999999999h"] {
            assert!(
                duration(huge).unwrap_err().contains("at most 168h"),
                "{huge}"
            );
        }
    }

    #[test]
    fn rates_ranges_targets() {
        assert_eq!(rate("2000/s"), Ok(2000.0));
        assert_eq!(rate("120/m"), Ok(2.0));
        assert!(rate("-5/s").unwrap_err().contains("positive"));
        assert!(rate("fast").unwrap_err().contains("expected N/s"));
        assert_eq!(rate("1/m"), Ok(1.0 / 60.0));
        for bad in ["0.0000001/s", "1e-300/s", "1e12/s"] {
            assert!(rate(bad).unwrap_err().contains("between 1/m and"), "{bad}");
        }
        assert_eq!(
            range("64..1024", |v| v.parse::<u32>().map_err(|e| e.to_string())),
            Ok((64, 1024))
        );
        assert!(range("9..3", |v| v.parse::<u32>().map_err(|e| e.to_string())).is_err());
        assert_eq!(target("leader:2", 3), Ok(Target::Leader(Some(2))));
        assert_eq!(target("1,3", 3), Ok(Target::Nodes(vec![1, 3])));
        assert!(target("4", 3)
            .unwrap_err()
            .contains("node 4 does not exist"));
        assert!(target("leaderr", 3).unwrap_err().contains("unknown target"));
    }
}
