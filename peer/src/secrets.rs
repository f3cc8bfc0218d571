//! A deployment's secrets, as `poc-server credential` makes and rotates them.
//!
//! A credential directory `DIR` holds two secrets, kept apart because they go to different
//! readers:
//! - `DIR/peer/`: the cluster's authorities (`ca.pem`, and during a rotation `next.pem` or
//!   `previous.pem`), for the servers only (`PEER_CREDENTIAL_DIR`);
//! - `DIR/operator/token`: the operator's bearer tokens, for the servers
//!   (`OPERATOR_TOKEN_FILE`), the routing module and the operator's tools.
//!
//! Rotation has three steps, each run once every instance reports the previous one in
//! `/placement` (`poc-client views` shows it): `rotate` (a new authority and a new token are
//! accepted), `promote` (instances sign with the new authority; tools send the new token),
//! `retire` (the old ones are refused).

use std::path::{Path, PathBuf};

use crate::{credential, operator, CredentialError, Fingerprints};

/// Where `new` put the two secrets.
#[derive(Debug)]
pub struct Made {
    pub peer: PathBuf,
    pub token: PathBuf,
}

pub fn peer_dir(dir: &Path) -> PathBuf {
    dir.join("peer")
}

pub fn token_file(dir: &Path) -> PathBuf {
    dir.join("operator").join("token")
}

/// Makes both secrets in `dir`. The directory is made readable by its owner only; the two
/// folders inside can be read by the servers' user once mounted (Compose bind-mounts them).
pub fn new(dir: &Path) -> Result<Made, CredentialError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CredentialError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    set_mode(dir, 0o700).map_err(io(dir))?;
    let peer = peer_dir(dir);
    credential::create(&peer)?;
    let token = token_file(dir);
    operator::create(&token)?;
    for path in [&peer, token.parent().expect("a folder")] {
        set_mode(path, 0o755).map_err(io(path))?;
    }
    for file in [peer.join(credential::PRIMARY), token.clone()] {
        set_mode(&file, 0o644).map_err(io(&file))?;
    }
    Ok(Made { peer, token })
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn report(dir: &Path, f: &Fingerprints) -> String {
    let tokens = operator::Tokens::load(&token_file(dir))
        .map(|t| t.len().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    format!(
        "peer authority in use: {}; accepted: {}; operator tokens accepted: {tokens}",
        f.primary,
        f.accepted.join(", ")
    )
}

const USAGE: &str = "usage: poc-server credential new|rotate|promote|retire|show DIR
  new      make DIR/peer (the cluster's authority) and DIR/operator/token
  rotate   step 1: a new authority and a new token, accepted beside the old ones
  promote  step 2: instances sign with the new authority; tools send the new token
  retire   step 3: the old authority and token are refused
  show     the fingerprints and token count in DIR";

/// Runs `poc-server credential ARGS`; returns the exit code.
pub fn command(args: &[String]) -> u8 {
    let [step, dir] = args else {
        eprintln!("{USAGE}");
        return 2;
    };
    let dir = Path::new(dir);
    let peer = peer_dir(dir);
    let token = token_file(dir);
    let done = match step.as_str() {
        "new" => new(dir).and_then(|_| Ok(credential::Keyring::load(&peer)?.0.fingerprints())),
        // The authorities' checks (one rotation at a time) come first.
        "rotate" => credential::rotate(&peer).and_then(|f| {
            set_mode(&peer.join(credential::NEXT), 0o644).ok();
            operator::rotate(&token)?;
            Ok(f)
        }),
        "promote" => credential::promote(&peer).inspect(|_| {
            set_mode(&peer.join(credential::PREVIOUS), 0o644).ok();
        }),
        "retire" => credential::retire(&peer).and_then(|f| {
            operator::retire(&token)?;
            Ok(f)
        }),
        "show" => credential::Keyring::load(&peer).map(|(k, _)| k.fingerprints()),
        _ => {
            eprintln!("{USAGE}");
            return 2;
        }
    };
    match done {
        Ok(f) => {
            println!("{}", report(dir, &f));
            0
        }
        Err(e) => {
            eprintln!("poc-server credential {step}: {e}");
            1
        }
    }
}
