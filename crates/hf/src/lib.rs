//! What gptpipe knows of Hugging Face's GPT-2 models: the model folder (`config.json` and
//! one `model.safetensors`, [`folder`]), the one parse of `config.json` ([`config`]), the
//! largest shapes accepted ([`limits`]) and downloads from the hub into its standard cache
//! ([`hub`]). The lowest layer of the workspace: it depends on no other gptpipe crate, and
//! is shared by the libtorch and ONNX-only builds, so both read and refuse a model the same
//! way.

pub mod config;
pub mod folder;
pub mod gpt2_simple;
pub mod hub;
pub mod limits;
pub mod pickle;
pub mod weights;

pub use config::{Activation, Field, HfConfig};
pub use folder::{check_folder, CONFIG_FILE, WEIGHTS_FILE};
pub use hub::hub_folder;
pub use limits::{check_config_shape, check_shape, MAX_N_INNER, SHAPE_LIMITS};
