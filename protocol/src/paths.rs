//! Paths inside an image root, resolved the way a kernel would, but lexically: one rule for the
//! hub's import and the agent's unpack (DESIGN §3.6), so what one refuses the other refuses.
//!
//! A symlink is safe only if the whole chain it starts — every link met on the way, through any
//! component — resolves inside the root. Checking each link's target on its own is not enough:
//! `d/up -> ..` and `top -> d/up/..` each stay inside lexically, yet `top` resolves to the
//! root's parent.

use std::fmt;

/// Most links followed while resolving one path (Linux's `MAXSYMLINKS`).
pub const MAX_LINK_HOPS: usize = 40;

/// Why a path does not resolve inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The chain leaves the root (a `..` above it, or an absolute target).
    Escapes {
        /// The link whose target leaves the root.
        via: String,
    },
    /// More than [`MAX_LINK_HOPS`] links, or a loop.
    TooManyLinks,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Escapes { via } => write!(f, "resolves outside the root through {via:?}"),
            LinkError::TooManyLinks => write!(f, "more than {MAX_LINK_HOPS} links or a loop"),
        }
    }
}

impl std::error::Error for LinkError {}

/// Resolves `path` (relative to the root, `/`-separated) through the image's symlinks, given by
/// `link_target` (the target of the symlink at a root-relative path, if that path is one).
/// Returns the resolved root-relative path (`""` for the root itself) or why it escapes. A
/// missing path is fine: only links decide where a path goes.
pub fn resolve_in_root<'a>(
    path: &str,
    link_target: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, LinkError> {
    // Components still to walk, in reverse so the next one is at the end.
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0usize;
    // The last link followed, to name in an error (the path itself before any).
    let mut via = path.to_string();
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return Err(LinkError::Escapes { via });
                }
            }
            _ => {
                at.push(c);
                let here = at.join("/");
                if let Some(target) = link_target(&here) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(LinkError::TooManyLinks);
                    }
                    if target.starts_with('/') || target.is_empty() {
                        return Err(LinkError::Escapes { via: here });
                    }
                    at.pop();
                    via = here;
                    // The target is relative to the link's directory: walk it next.
                    pending.extend(target.split('/').rev().map(str::to_string));
                    if pending.len() > 4096 {
                        return Err(LinkError::TooManyLinks);
                    }
                }
            }
        }
    }
    Ok(at.join("/"))
}

/// Whether the target of the symlink at `link` (root-relative), read on its own as written,
/// stays inside the root: not absolute, and no `..` climbs above the root from the link's
/// directory. Agents refuse a link that fails this even when its chain would end inside.
pub fn lexically_inside(link: &str, target: &str) -> bool {
    if target.starts_with('/') || target.is_empty() {
        return false;
    }
    let mut depth = link
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .count() as i64
        - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Checks every symlink of an image: each must resolve inside the root. `links` lists each
/// link's root-relative path and target.
pub fn check_links<'a>(
    links: impl IntoIterator<Item = &'a str>,
    link_target: impl Fn(&str) -> Option<&'a str> + Copy,
) -> Result<(), (String, LinkError)> {
    for l in links {
        resolve_in_root(l, link_target).map_err(|e| (l.to_string(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn resolve(links: &[(&str, &str)], path: &str) -> Result<String, LinkError> {
        let m: BTreeMap<&str, &str> = links.iter().copied().collect();
        resolve_in_root(path, |p| m.get(p).copied())
    }

    #[test]
    fn links_inside_the_root_resolve() {
        let links = [("bin/sh", "busybox"), ("lib", "usr/lib"), ("d/up", "..")];
        assert_eq!(resolve(&links, "bin/sh").as_deref(), Ok("bin/busybox"));
        assert_eq!(resolve(&links, "lib/x").as_deref(), Ok("usr/lib/x"));
        assert_eq!(resolve(&links, "d/up").as_deref(), Ok(""));
        assert_eq!(resolve(&links, "./a/../b").as_deref(), Ok("b"));
    }

    #[test]
    fn link_chains_that_leave_the_root_are_refused() {
        // Each target stays inside on its own; together they reach the root's parent.
        let chain = [("d/up", ".."), ("top", "d/up/..")];
        assert!(matches!(
            resolve(&chain, "top"),
            Err(LinkError::Escapes { .. })
        ));
        // A link to a link to '.', then up.
        let dots = [("a", "."), ("b", "a/.."), ("c/e", "../b")];
        assert!(resolve(&dots, "b").is_err());
        assert!(resolve(&dots, "c/e").is_err());
        assert!(resolve(&[("l", "/etc")], "l").is_err());
        assert!(resolve(&[("l", "../../..")], "l").is_err());
        assert!(resolve(&[], "..").is_err());
    }

    #[test]
    fn a_target_read_alone_must_stay_inside() {
        assert!(lexically_inside("a/b/l", "../x"));
        assert!(lexically_inside("a/l", ".."));
        assert!(!lexically_inside("l", ".."));
        assert!(!lexically_inside("a/l", "../../x"));
        assert!(!lexically_inside("l", "/etc"));
        assert!(!lexically_inside("l", ""));
    }

    #[test]
    fn loops_and_long_chains_are_refused() {
        assert_eq!(
            resolve(&[("a", "b"), ("b", "a")], "a"),
            Err(LinkError::TooManyLinks)
        );
        let names: Vec<String> = (0..=MAX_LINK_HOPS + 1).map(|i| format!("l{i}")).collect();
        let chain: Vec<(&str, &str)> = names
            .windows(2)
            .map(|w| (w[0].as_str(), w[1].as_str()))
            .collect();
        assert_eq!(resolve(&chain, "l0"), Err(LinkError::TooManyLinks));
        assert!(resolve(&chain[..10], "l0").is_ok());
    }
}
