//! What a plan file says, before validation: serde structs that reject
//! unknown keys. `Plan::parse` turns them into the typed plan.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A mapping of names to values that refuses a name given twice (a plain
/// map would keep the last one silently: `{ lost: 0, lost: any }`).
#[derive(Debug)]
pub struct UniqueMap<V>(pub BTreeMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Keys<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of names to values, e.g. { lost: 0 }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = m.next_key::<String>()? {
                    if out.contains_key(&k) {
                        return Err(A::Error::custom(format!(
                            "duplicate key `{k}`: give each key once"
                        )));
                    }
                    out.insert(k, m.next_value()?);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(Keys(PhantomData))
    }
}

/// A YAML scalar kept as text (numbers, booleans and strings alike), so that
/// validation can give one precise error for each field.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Str(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub name: String,
    pub seed: Option<u64>,
    pub duration: String,
    #[serde(default)]
    pub cluster: RawCluster,
    #[serde(default)]
    pub topic: RawTopic,
    #[serde(default)]
    pub producers: RawProducers,
    #[serde(default)]
    pub consumers: RawConsumers,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub faults: Vec<RawFault>,
    #[serde(default)]
    pub expect: UniqueMap<Scalar>,
    #[serde(default)]
    pub drain: RawDrain,
    /// A template's search space (`unlost explore`); a run ignores it.
    #[serde(default)]
    pub explore: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub broker: Option<String>,
    pub nodes: Option<u32>,
    pub version: Option<Scalar>,
    #[serde(default)]
    pub settings: UniqueMap<Scalar>,
    #[serde(default)]
    pub properties: UniqueMap<Scalar>,
    pub recipe: Option<RawRecipe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecipe {
    pub command: Option<Vec<String>>,
    pub ready: Option<String>,
    pub ready_timeout: Option<String>,
    pub protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    pub name: Option<String>,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i16>,
    pub min_insync_replicas: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProducers {
    pub count: Option<u32>,
    pub rate: Option<String>,
    pub acks: Option<Scalar>,
    pub retries: Option<u32>,
    pub timeout: Option<String>,
    pub idempotent: Option<bool>,
    pub max_in_flight: Option<u32>,
    pub size: Option<Scalar>,
    pub keys: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumers {
    pub count: Option<u32>,
    pub group: Option<String>,
    pub commit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub lazyfs: Option<bool>,
    pub writeback: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrain {
    pub timeout: Option<String>,
}

/// A fault line: a schedule (at / every / random) and one action, or a
/// weighted `choose` list for random schedules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub at: Option<String>,
    pub every: Option<String>,
    pub start: Option<String>,
    pub random: Option<String>,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    #[serde(flatten)]
    pub action: RawAction,
    pub choose: Option<Vec<RawChoice>>,
}

/// At most one of these is set.
#[derive(Debug, Default, Deserialize)]
pub struct RawAction {
    /// power-loss: keep a random prefix of each file's last unsynced write.
    pub torn: Option<bool>,
    /// corrupt: bitflip (default) or truncate.
    pub how: Option<String>,
    /// partition: cut the harness's clients off the smaller side too.
    pub clients: Option<bool>,
    /// packet-loss: percent of packets dropped.
    pub percent: Option<u32>,
    pub kill: Option<Scalar>,
    pub pause: Option<Scalar>,
    pub restart: Option<Scalar>,
    #[serde(rename = "consumer-crash")]
    pub consumer_crash: Option<Scalar>,
    pub partition: Option<Scalar>,
    #[serde(rename = "packet-loss")]
    pub packet_loss: Option<Scalar>,
    #[serde(rename = "power-loss")]
    pub power_loss: Option<Scalar>,
    #[serde(rename = "drop-kernel-caches")]
    pub drop_kernel_caches: Option<Scalar>,
    pub corrupt: Option<Scalar>,
    #[serde(rename = "disk-error")]
    pub disk_error: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChoice {
    #[serde(flatten)]
    pub action: RawAction,
    pub weight: Option<u32>,
}
