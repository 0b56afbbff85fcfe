//! `stylefarm fetch BATCH --out DIR`: every succeeded job's outputs (the
//! library's `Client::fetch`), listed on stdout.

use anyhow::Result;

use crate::cli::{connect_client, Cli};
use crate::output::print_json;

pub async fn fetch(cli: &Cli, batch: &str, out: &std::path::Path) -> Result<()> {
    let mut client = connect_client(cli).await?;
    let fetched = client.fetch(batch, out).await?;
    if cli.json {
        return print_json(&fetched.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    }
    for path in &fetched.files {
        println!("{}", path.display());
    }
    eprintln!(
        "{} files from {} succeeded jobs{}",
        fetched.files.len(),
        fetched.jobs,
        if fetched.skipped > 0 { format!("; {} jobs have no outputs", fetched.skipped) } else { String::new() }
    );
    Ok(())
}
