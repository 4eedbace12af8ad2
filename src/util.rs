//! Small helpers shared by the subcommands.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// A private directory (mode 0700) removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let mut random = [0u8; 8];
        openssl::rand::rand_bytes(&mut random).map_err(std::io::Error::other)?;
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            crate::csr::hex(&random)
        ));
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Creates `path` (which must not exist), writes it whole and syncs it.
pub fn write_new_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have narrowed the mode; a public certificate should stay readable.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(data)?;
    f.sync_all()
}

/// Replaces `path` atomically: writes a temporary file beside it, then renames it over.
pub fn write_file_atomically(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    // The directory is synced too: without it a power cut may undo the rename (and an entry
    // counter could hand out an id again).
    let result = write_new_file(&tmp, data, mode)
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| fs::File::open(dir)?.sync_all());
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// One PEM block: its label and the DER it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

/// Strict PEM: `-----BEGIN X-----` and `-----END X-----` with the same label around lines of
/// base64 only, LF or CRLF endings, nothing but whitespace between blocks. RFC 1421 headers
/// (`Proc-Type: 4,ENCRYPTED`) are refused: OpenSSL's own PEM reader would answer them with an
/// interactive passphrase prompt, which must never be reachable from a hypervisor's answer.
pub fn parse_pem(text: &str) -> Result<Vec<PemBlock>, &'static str> {
    let text = text.replace("\r\n", "\n");
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim_end);
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let label = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .ok_or("text outside a PEM block")?;
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        loop {
            let line = lines.next().ok_or("a PEM block has no END line")?;
            if line == end {
                break;
            }
            if line.starts_with("-----") {
                return Err("a PEM block's BEGIN and END lines do not match");
            }
            if line.is_empty()
                || !line
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
            {
                return Err("a PEM block holds a line that is not base64");
            }
            body.push_str(line);
        }
        let der =
            openssl::base64::decode_block(&body).map_err(|_| "a PEM block is not valid base64")?;
        if der.is_empty() {
            return Err("a PEM block is empty");
        }
        blocks.push(PemBlock {
            label: label.to_string(),
            der,
        });
    }
    Ok(blocks)
}

/// Splits a chain PEM into its blocks, each ending in a newline.
pub fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END ") {
            blocks.push(std::mem::take(&mut current));
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    #[test]
    fn strict_pem_refuses_headers_and_stray_text() {
        let ok = "-----BEGIN X-----\r\nAAEC\r\n-----END X-----\r\n\n-----BEGIN Y-----\nAw==\n-----END Y-----";
        let blocks = super::parse_pem(ok).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            (blocks[0].label.as_str(), blocks[0].der.as_slice()),
            ("X", &[0u8, 1, 2][..])
        );
        assert_eq!(
            (blocks[1].label.as_str(), blocks[1].der.as_slice()),
            ("Y", &[3u8][..])
        );
        let encrypted = "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAEC\n-----END CERTIFICATE-----\n";
        assert_eq!(
            super::parse_pem(encrypted),
            Err("a PEM block holds a line that is not base64")
        );
        assert_eq!(super::parse_pem("hello"), Err("text outside a PEM block"));
        assert_eq!(
            super::parse_pem("-----BEGIN X-----\nAAEC\n"),
            Err("a PEM block has no END line")
        );
        assert_eq!(
            super::parse_pem("-----BEGIN X-----\nAAEC\n-----END Y-----\n"),
            Err("a PEM block's BEGIN and END lines do not match")
        );
        assert_eq!(super::parse_pem("").unwrap(), vec![]);
    }

    #[test]
    fn splits_blocks() {
        let text = "-----BEGIN A-----\nx\n-----END A-----\n-----BEGIN B-----\ny\n-----END B-----\n";
        assert_eq!(
            super::pem_blocks(text),
            vec![
                "-----BEGIN A-----\nx\n-----END A-----\n".to_string(),
                "-----BEGIN B-----\ny\n-----END B-----\n".to_string()
            ]
        );
    }
}
