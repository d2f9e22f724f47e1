//! The HTTP APIs: gpt-2-cloud-run's ([`cloud_run`]), OpenAI's ([`openai`]) and the page
//! ([`page`]).

pub mod cloud_run;
pub mod openai;
pub mod page;
