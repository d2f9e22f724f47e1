//! The page for people (`GET /` from a browser): write, press the button (or Ctrl+Enter),
//! and the continuations stream in as they are generated, through the OpenAI API's
//! server-sent events. One self-contained file: no CDN, fonts or remote scripts, so it
//! works offline and behind any firewall.

use crate::ServeConfig;
use serde_json::json;

const PAGE: &str = include_str!("page.html");

/// The page, with the model's name, its context (`n_ctx`, once loaded) and the served
/// defaults filled in. They go in as JSON with `<` escaped, so a model name cannot close
/// the script element.
pub fn render(config: &ServeConfig, n_ctx: Option<usize>) -> String {
    let d = &config.defaults;
    let settings = json!({
        "model": config.model_name,
        "context": n_ctx,
        "length": d.length.min(config.max_length),
        "max_length": config.max_length,
        "temperature": d.temperature,
        "top_k": d.top_k,
        "top_p": d.top_p,
        "max_alternatives": config.max_batch.min(8),
    })
    .to_string()
    .replace('<', "\\u003c");
    PAGE.replace("/*SETTINGS*/{}", &settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_model_name_cannot_break_out_of_the_script() {
        let config = ServeConfig {
            host: "127.0.0.1".into(),
            port: 0,
            max_batch: 4,
            max_queue: 4,
            max_length: 100,
            request_timeout: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            max_body: 1024,
            client_timeout: Duration::from_secs(1),
            model_name: "</script><script>alert(1)</script>".into(),
            defaults: Default::default(),
        };
        let page = render(&config, Some(64));
        assert!(!page.contains("</script><script>alert"));
        assert!(page.contains("\\u003c/script>"));
        assert!(!page.contains("/*SETTINGS*/"));
        // Self-contained: nothing is fetched from elsewhere.
        for remote in ["http://", "https://", "//cdn", "@import"] {
            let found = page.match_indices(remote).any(|(i, _)| {
                // The attribution links are anchors, not resources.
                !page[..i].ends_with("href=\"")
            });
            assert!(!found, "the page loads {remote}");
        }
    }
}
