//! `petrel dkim keygen`: makes a DKIM signing key (mode 0600) and prints
//! the DNS TXT record to publish for it.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::policy::keys::{self, Algorithm};

/// Arguments of `petrel dkim keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// The signing domain (`d=`).
    #[arg(long)]
    pub domain: String,
    /// The selector (`s=`).
    #[arg(long)]
    pub selector: String,
    /// Key type.
    #[arg(long, value_enum, default_value = "rsa2048")]
    pub algorithm: Algorithm,
    /// Where to write the key. Default: the `key` of the matching
    /// `[[dkim.keys]]` entry of the configuration, else
    /// `<domain>.<selector>.key` in the current directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `keygen`; the exit status.
pub fn keygen(config: Option<&Path>, args: &KeygenArgs) -> i32 {
    let domain = args.domain.trim_end_matches('.').to_ascii_lowercase();
    let selector = &args.selector;
    let selector_ok = !selector.is_empty()
        && selector
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !selector_ok || domain.is_empty() || domain.contains(char::is_whitespace) {
        eprintln!("petrel: dkim keygen: invalid domain or selector");
        return 2;
    }
    let path = args.out.clone().unwrap_or_else(|| {
        Config::load(config)
            .ok()
            .and_then(|c| {
                c.dkim
                    .keys
                    .iter()
                    .find(|k| k.domain == domain && &k.selector == selector)
                    .map(|k| k.key.clone())
            })
            .unwrap_or_else(|| PathBuf::from(format!("{domain}.{selector}.key")))
    });
    match keys::write_new(&path, args.algorithm) {
        Ok(txt) => {
            eprintln!("petrel: wrote {} (mode 0600); publish:", path.display());
            println!("{}", keys::zone_line(&domain, selector, &txt));
            0
        }
        Err(e) => {
            eprintln!("petrel: dkim keygen: {e}");
            1
        }
    }
}
