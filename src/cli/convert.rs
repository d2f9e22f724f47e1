//! `gptpipe convert SRC DEST`: any model gptpipe reads (a Hugging Face folder with
//! safetensors or a `pytorch_model.bin`, a hub id) written as a Hugging Face folder with
//! `model.safetensors`, `config.json` and the tokenizer files. Reading goes through
//! `gptpipe_hf::weights`, so each format it learns converts here too. DEST appears whole or
//! not at all: the folder is built beside it and renamed into place.

use anyhow::{bail, Context, Result};
use clap::Args;
use gptpipe_core::runner::RunError;
use gptpipe_hf::folder::{CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILES, WEIGHTS_FILE};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ConvertArgs {
    /// The model: a folder (config.json + model.safetensors or pytorch_model.bin) or a hub id
    pub source: String,
    /// The folder to write; must not exist or be empty (see --force)
    pub dest: PathBuf,
    /// Replace a DEST that holds files
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: ConvertArgs) -> Result<(), RunError> {
    convert(&args).map_err(RunError::Other)
}

fn convert(args: &ConvertArgs) -> Result<()> {
    let src = Path::new(&args.source);
    let checkpoint = gptpipe_hf::gpt2_simple::is_checkpoint(src);
    let src = if checkpoint || src.is_dir() {
        src.to_path_buf()
    } else if src.exists() {
        bail!("{} is not a model folder", src.display());
    } else {
        gptpipe_hf::hub_folder(&args.source)?
    };
    if !checkpoint {
        gptpipe_hf::check_folder(&src)?;
    }
    let dest = absolute(&args.dest)?;
    // A step of a checkpoint (`run1/model-500`) is a prefix of files in its folder.
    let src_folder = if src.is_dir() {
        src.clone()
    } else {
        src.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let real_src = src_folder
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", src.display()))?;
    if dest.starts_with(&real_src) {
        bail!(
            "{} is inside the model folder {}: write the converted model elsewhere",
            args.dest.display(),
            src.display()
        );
    }
    if dest.is_symlink() || dest.exists() && !dest.is_dir() {
        bail!("{} exists and is not a folder", args.dest.display());
    }
    let occupied = dest.is_dir()
        && std::fs::read_dir(&dest)
            .with_context(|| format!("cannot read {}", dest.display()))?
            .next()
            .is_some();
    if occupied && !args.force {
        bail!(
            "{} holds files: gptpipe convert never replaces them unless given --force",
            args.dest.display()
        );
    }
    let parent = dest.parent().context("DEST has no parent folder")?;
    if !parent.is_dir() {
        bail!("the folder {} does not exist", parent.display());
    }

    let build = tempfile::Builder::new()
        .prefix(".gptpipe-convert-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a folder in {}", parent.display()))?;
    let (weights, what) = if checkpoint {
        // gpt-2-simple's run: its hparams as config.json, its encoder as GPT-2's tokenizer files.
        let ckpt = gptpipe_hf::gpt2_simple::read_checkpoint(&src)?;
        std::fs::write(
            build.path().join(CONFIG_FILE),
            serde_json::to_vec_pretty(&ckpt.config)?,
        )?;
        for (from, to) in [
            (&ckpt.encoder_json, "vocab.json"),
            (&ckpt.vocab_bpe, "merges.txt"),
        ] {
            std::fs::copy(from, build.path().join(to))
                .with_context(|| format!("cannot copy {}", from.display()))?;
        }
        let step = ckpt
            .located
            .step
            .map_or(String::new(), |s| format!(", step {s}"));
        (
            ckpt.to_safetensors()?,
            format!("gpt-2-simple checkpoint{step}"),
        )
    } else {
        let copied = [CONFIG_FILE, GENERATION_CONFIG_FILE]
            .iter()
            .chain(TOKENIZER_FILES)
            .filter(|f| src.join(f).is_file());
        for f in copied {
            std::fs::copy(src.join(f), build.path().join(f))
                .with_context(|| format!("cannot copy {}", src.join(f).display()))?;
        }
        let (format, _) = gptpipe_hf::weights::find(&src).context("no weights file")?;
        (
            gptpipe_hf::weights::read(&src)?,
            format.file_name().to_owned(),
        )
    };
    std::fs::write(build.path().join(WEIGHTS_FILE), &weights)
        .context("cannot write model.safetensors")?;
    // A folder in the way is moved aside first; renaming over an empty one works as is.
    let aside =
        occupied.then(|| parent.join(format!(".gptpipe-convert-old-{}", std::process::id())));
    if let Some(aside) = &aside {
        std::fs::rename(&dest, aside)
            .with_context(|| format!("cannot move {} aside", dest.display()))?;
    }
    let built = build.keep();
    std::fs::rename(&built, &dest)
        .with_context(|| format!("cannot rename {} to {}", built.display(), dest.display()))?;
    if let Some(aside) = aside {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("cannot remove the replaced {}", aside.display()))?;
    }
    println!(
        "converted {} ({what}) to {}",
        args.source,
        args.dest.join(WEIGHTS_FILE).display()
    );
    Ok(())
}

/// `path` made absolute through its real parent (it may not exist yet).
fn absolute(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a folder", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("the folder {} does not exist", parent.display()))?;
    Ok(parent.join(name))
}
