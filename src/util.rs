//! Small helpers shared by the subcommands.

use std::{
    fs,
    os::unix::fs::DirBuilderExt,
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
