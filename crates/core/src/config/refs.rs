//! Values of a pipeline that name something else: another stage (`"@name"`), a path, a
//! model, a device, the checkpoint finetune continues from. Each is parsed once, when the
//! params are deserialized (loading a pipeline, or a worker rebuilding one from JSON), and
//! consumers match on the type. Each serializes back to the string it was read from, so
//! `keyed_json` (what cache keys hash) and the JSON Schema see exactly what the user wrote.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

/// Types that are written as one string: their schema is a string's.
macro_rules! string_schema {
    ($($t:ty),*) => {$(
        impl JsonSchema for $t {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                String::schema_name()
            }
            fn json_schema(generator: &mut SchemaGenerator) -> Schema {
                String::json_schema(generator)
            }
        }
    )*};
}

/// Serialized as their [`fmt::Display`]: the string they were read from.
macro_rules! as_string {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}

/// `"@name"`: another stage of the pipeline, whose output is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageRef(String);

impl StageRef {
    /// The stage `s` names, if it is written `"@name"`.
    pub fn parse(s: &str) -> Option<Self> {
        s.strip_prefix('@').map(|n| Self(n.to_owned()))
    }

    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The stage's name, without `@`.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// A path as the pipeline writes it, with a leading `~` or `~/` expanded against `$HOME`
/// (when it is set). A relative path is relative to the pipeline file's folder
/// ([`super::Pipeline::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPath {
    written: String,
    path: PathBuf,
}

impl UserPath {
    pub fn new(written: &str) -> Self {
        let home = || std::env::var_os("HOME").filter(|h| !h.is_empty());
        let path = match written.strip_prefix('~') {
            Some("") => home().map(PathBuf::from),
            Some(rest) if rest.starts_with('/') => {
                home().map(|h| PathBuf::from(h).join(rest.trim_start_matches('/')))
            }
            _ => None,
        };
        Self {
            written: written.to_owned(),
            path: path.unwrap_or_else(|| PathBuf::from(written)),
        }
    }

    /// A path taken as it is (already resolved: nothing to expand).
    pub fn from_path(path: PathBuf) -> Self {
        Self {
            written: path.to_string_lossy().into_owned(),
            path,
        }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// Why a leading `~` could not be expanded, for the config to refuse: `~user` (not
    /// supported) or `$HOME` not set. Left as written, it would name a folder `~` beside the
    /// pipeline file.
    pub fn unexpanded_tilde(&self) -> Option<String> {
        let rest = self.written.strip_prefix('~')?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Some(format!(
                "{:?}: `~user` paths are not supported; write the folder in full",
                self.written
            ));
        }
        (self.path.as_os_str() == self.written.as_str()).then(|| {
            format!(
                "{:?} starts with `~` (the home folder), but $HOME is not set",
                self.written
            )
        })
    }

    /// The path with `~` expanded; relative paths stay relative.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Display for UserPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

/// A text input: another stage's output (`"@stage"`) or a path (a file, a folder, a glob).
#[derive(Clone, PartialEq, Eq)]
pub enum InputRef {
    Stage(StageRef),
    Path(UserPath),
}

impl Default for InputRef {
    fn default() -> Self {
        Self::Path(UserPath::new(""))
    }
}

impl From<&str> for InputRef {
    fn from(s: &str) -> Self {
        match StageRef::parse(s) {
            Some(r) => Self::Stage(r),
            None => Self::Path(UserPath::new(s)),
        }
    }
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stage(r) => r.fmt(f),
            Self::Path(p) => p.fmt(f),
        }
    }
}

/// As the string it was written as, for messages (`loading dataset "@prep"`).
impl fmt::Debug for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.as_written(), f)
    }
}

impl InputRef {
    /// The value as written.
    pub fn as_written(&self) -> Cow<'_, str> {
        match self {
            Self::Stage(r) => Cow::Owned(r.to_string()),
            Self::Path(p) => Cow::Borrowed(p.as_str()),
        }
    }
}

/// Where finetune starts from: `"latest"` (resume this training), `"fresh"` (start over),
/// or a checkpoint folder.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RestoreFrom {
    #[default]
    Latest,
    Fresh,
    Path(UserPath),
}

impl RestoreFrom {
    /// The value as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Latest => "latest",
            Self::Fresh => "fresh",
            Self::Path(p) => p.as_str(),
        }
    }
}

impl From<&str> for RestoreFrom {
    fn from(s: &str) -> Self {
        match s {
            "latest" => Self::Latest,
            "fresh" => Self::Fresh,
            path => Self::Path(UserPath::new(path)),
        }
    }
}

impl fmt::Display for RestoreFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As the string it was written as, for messages (`restore_from = "ckpt"`).
impl fmt::Debug for RestoreFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Where a stage computes: `"auto"` (CUDA when present), `"cpu"`, `"cuda"`, `"cuda:N"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    /// The first CUDA device.
    Cuda,
    /// `"cuda:N"`.
    CudaIndex(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    /// Parses a device; the error is the message the config reports.
    fn from_str(d: &str) -> Result<Self, String> {
        let index = d
            .strip_prefix("cuda:")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<usize>().ok())
            // Serialized back as written: "cuda:01" would not be.
            .filter(|n| d == format!("cuda:{n}"));
        match (d, index) {
            ("auto", _) => Ok(Self::Auto),
            ("cpu", _) => Ok(Self::Cpu),
            ("cuda", _) => Ok(Self::Cuda),
            (_, Some(n)) => Ok(Self::CudaIndex(n)),
            _ => Err(format!(
                "device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", not {d:?}"
            )),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda => f.write_str("cuda"),
            Self::CudaIndex(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// For params built in code and tests (`p.device = "cpu".into()`); panics on a value that
/// is not a device.
impl From<&str> for Device {
    fn from(s: &str) -> Self {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// How many data-parallel ranks (one process each) a finetune trains with: a number, or
/// `"all"`: every CUDA device of the machine it runs on (one on the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Devices {
    Count(std::num::NonZeroUsize),
    All,
}

impl Default for Devices {
    fn default() -> Self {
        Self::Count(std::num::NonZeroUsize::MIN)
    }
}

impl Devices {
    pub fn is_one(&self) -> bool {
        *self == Self::default()
    }
}

impl Serialize for Devices {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(n) => s.serialize_u64(n.get() as u64),
            Self::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        const EXPECTED: &str = "a number of devices (1 or more) or \"all\"";
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Devices;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Devices, E> {
                usize::try_from(n)
                    .ok()
                    .and_then(std::num::NonZeroUsize::new)
                    .map(Devices::Count)
                    .ok_or_else(|| E::custom(format!("devices must be {EXPECTED}, not {n}")))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Devices, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(-1))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Devices, E> {
                match s {
                    "all" => Ok(Devices::All),
                    _ => Err(E::custom(format!("devices must be {EXPECTED}, not {s:?}"))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

// The schema's form of [`Devices`].
/// Data-parallel ranks: a number, or "all" (every CUDA device; one on the CPU).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum DevicesSchema {
    Count(std::num::NonZeroUsize),
    All(AllDevices),
}

/// Every CUDA device of the machine (one on the CPU).
#[derive(JsonSchema)]
#[allow(dead_code)]
enum AllDevices {
    #[serde(rename = "all")]
    All,
}

impl JsonSchema for Devices {
    fn schema_name() -> Cow<'static, str> {
        "Devices".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        DevicesSchema::json_schema(generator)
    }
}

/// A model to load: another stage's (`"@train"`), a local folder, a hub id, or an inline
/// table for a fresh random model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelRef {
    /// `"@train"`: a finetune or export stage's output.
    Stage(StageRef),
    /// A value starting with `.`, `/` or `~`: a folder in Hugging Face layout.
    Folder(UserPath),
    /// `"gpt2"`, `"org/repo"`: a folder beside the pipeline file of that name if there is
    /// one, else a hub id.
    Name(String),
    /// A fresh model with random weights.
    Inline(super::InlineModel),
}

impl Default for ModelRef {
    fn default() -> Self {
        ModelRef::Name("gpt2".into())
    }
}

impl From<&str> for ModelRef {
    fn from(s: &str) -> Self {
        if let Some(r) = StageRef::parse(s) {
            Self::Stage(r)
        } else if s.starts_with(['.', '/', '~']) {
            Self::Folder(UserPath::new(s))
        } else {
            Self::Name(s.to_owned())
        }
    }
}

impl ModelRef {
    /// The local folder this names, relative to `base`: a path (`./m`, `/m`, `~/m`), or a
    /// bare name that is a folder in `base` or a step of a gpt-2-simple checkpoint there
    /// (`checkpoint/run1/model-500`; else it is a hub id).
    pub fn folder_in(&self, base: &Path) -> Option<PathBuf> {
        match self {
            Self::Folder(p) => Some(base.join(p.path())),
            Self::Name(s) => Some(base.join(s))
                .filter(|p| p.is_dir() || gptpipe_hf::gpt2_simple::is_checkpoint(p)),
            Self::Stage(_) | Self::Inline(_) => None,
        }
    }

    /// The value as written; `None` for an inline table.
    pub fn as_written(&self) -> Option<Cow<'_, str>> {
        match self {
            Self::Stage(r) => Some(Cow::Owned(r.to_string())),
            Self::Folder(p) => Some(Cow::Borrowed(p.as_str())),
            Self::Name(s) => Some(Cow::Borrowed(s)),
            Self::Inline(_) => None,
        }
    }
}

impl Serialize for ModelRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Inline(m) => m.serialize(s),
            named => s.serialize_str(&named.as_written().expect("not inline")),
        }
    }
}

/// By hand rather than `untagged`: a table is read as an [`super::InlineModel`] directly,
/// so a misspelt key in it is reported by name (with a suggestion), not as "no variant
/// matched".
impl<'de> Deserialize<'de> for ModelRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ModelRef;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a hub id, a folder, \"@stage\", or a table of n_layer, n_head, n_embd")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelRef, E> {
                let value = ModelRef::from(v);
                let path = match &value {
                    ModelRef::Folder(p) => Some(p),
                    _ => None,
                };
                refuse_unexpanded::<E>(path)?;
                Ok(value)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ModelRef, A::Error> {
                super::InlineModel::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ModelRef::Inline)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

// The schema's form of [`ModelRef`] (its doc comment is the schema's description).
/// A model to load: a hub id, a local folder, `"@stage"`, or an inline table for a fresh
/// random model.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ModelRefSchema {
    /// `"gpt2"`, `"gpt2-medium"`, `"org/repo"`, `"./models/mine"` or `"@train"`.
    Named(String),
    /// A fresh model with random weights.
    Inline(super::InlineModel),
}

impl JsonSchema for ModelRef {
    fn schema_name() -> Cow<'static, str> {
        "ModelRef".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        ModelRefSchema::json_schema(generator)
    }
}

string_schema!(UserPath, InputRef, RestoreFrom, Device);
as_string!(UserPath, InputRef, RestoreFrom, Device);

/// A path whose `~` cannot be expanded is an error at its key.
fn refuse_unexpanded<E: serde::de::Error>(path: Option<&UserPath>) -> Result<(), E> {
    match path.and_then(UserPath::unexpanded_tilde) {
        Some(why) => Err(E::custom(why)),
        None => Ok(()),
    }
}

impl<'de> Deserialize<'de> for UserPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Self::new(&String::deserialize(d)?);
        refuse_unexpanded::<D::Error>(Some(&value))?;
        Ok(value)
    }
}

impl<'de> Deserialize<'de> for InputRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Self::from(String::deserialize(d)?.as_str());
        let path = match &value {
            Self::Path(p) => Some(p),
            Self::Stage(_) => None,
        };
        refuse_unexpanded::<D::Error>(path)?;
        Ok(value)
    }
}

impl<'de> Deserialize<'de> for RestoreFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Self::from(String::deserialize(d)?.as_str());
        let path = match &value {
            Self::Path(p) => Some(p),
            Self::Latest | Self::Fresh => None,
        };
        refuse_unexpanded::<D::Error>(path)?;
        Ok(value)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_serialize_back_as_written() {
        for s in [
            "@train", "@", "./m", "/abs/m", "~/m", "~", "~user/m", "gpt2", "org/repo", "",
        ] {
            let m = ModelRef::from(s);
            assert_eq!(
                serde_json::to_value(&m).unwrap(),
                serde_json::json!(s),
                "{s}"
            );
            let i = InputRef::from(s);
            assert_eq!(
                serde_json::to_value(&i).unwrap(),
                serde_json::json!(s),
                "{s}"
            );
            let r = RestoreFrom::from(s);
            assert_eq!(
                serde_json::to_value(&r).unwrap(),
                serde_json::json!(s),
                "{s}"
            );
        }
        for s in ["auto", "cpu", "cuda", "cuda:0", "cuda:12"] {
            let d: Device = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        for s in ["tpu", "cuda:", "cuda:01", "cuda:+1", " cpu", "CUDA"] {
            assert!(s.parse::<Device>().is_err(), "{s}");
        }
    }

    #[test]
    fn a_leading_tilde_is_the_home_folder() {
        let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
            return;
        };
        let home = PathBuf::from(home);
        assert_eq!(UserPath::new("~/m/x").path(), home.join("m/x"));
        assert_eq!(UserPath::new("~").path(), home);
        assert_eq!(UserPath::new("~user/m").path(), Path::new("~user/m"));
        assert_eq!(UserPath::new("a/~/m").path(), Path::new("a/~/m"));
        assert_eq!(UserPath::new("~/m").as_str(), "~/m");
    }
}
