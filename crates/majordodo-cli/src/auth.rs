//! `majordodo auth`: credentials for the broker's `[[http.users]]` entries. The broker's file
//! only ever holds a token's SHA-256 or a password's PBKDF2 hash.

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use majordodo_broker::http::auth::{generate_token, hash_password, token_digest, write_token_file};

use crate::cli::AuthCommand;
use crate::error::usage;

/// Runs `majordodo auth ...`.
pub(crate) fn run(command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::NewToken { out, name, role } => {
            if out.exists() {
                return Err(usage(format!(
                    "{} already exists; remove it first or choose another --out",
                    out.display()
                )));
            }
            if name.trim().is_empty() {
                return Err(usage("--name must not be empty"));
            }
            let token = generate_token();
            write_token_file(&out, &token)
                .with_context(|| format!("write the token to {}", out.display()))?;
            eprintln!(
                "wrote a new token to {} (mode 0600); add this entry to the broker's file:",
                out.display()
            );
            println!(
                "[[http.users]]\nname = {}\nrole = \"{role}\"\ntoken_sha256 = \"{}\"",
                toml_string(&name),
                token_digest(&token)
            );
            Ok(())
        }
        AuthCommand::HashPassword => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("password (the input is shown; pipe it in to avoid that):");
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .context("read the password from stdin")?;
            let password = line.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(usage("empty password on stdin"));
            }
            println!("password_hash = \"{}\"", hash_password(password));
            Ok(())
        }
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
