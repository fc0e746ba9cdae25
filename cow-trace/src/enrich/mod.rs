//! Where and why, for the session: each fault's mapping and symbolized ip (--resolve), its user
//! stack (--stack), and the mapping of a summary region. A process that has exited is looked up
//! through its parent: a forked child that did not exec has its parent's layout.
mod attribute;
mod symbolize;

use std::collections::HashMap;

use self::{
    attribute::{Attribution, Mappings},
    symbolize::Symbols,
};
use crate::event::{Fault, mapping_name};

/// At most this many stacks are kept symbolized; then the cache starts over.
const STACK_CACHE_CAP: usize = 1 << 14;

#[derive(Default)]
pub struct Enricher {
    mappings: Mappings,
    symbols: Symbols,
    /// child -> parent, from fork records, for the parent fallback.
    parents: HashMap<u32, u32>,
    stacks: HashMap<(u32, u32), Vec<String>>,
    /// Stacks the kernel captured but that could not be read back: losses, as the kernel's
    /// own failed captures are.
    unread_stacks: u64,
}

impl Enricher {
    pub fn on_fork(&mut self, parent: u32, child: u32) {
        self.parents.insert(child, parent);
    }

    /// How many stacks could not be read back from the kernel.
    pub fn unread_stacks(&self) -> u64 {
        self.unread_stacks
    }

    /// Re-reads the mappings of live `pids` (for --summary, which resolves them at the end,
    /// when some may have exited).
    pub fn refresh(&mut self, pids: impl IntoIterator<Item = u32>) {
        for pid in pids {
            self.mappings.refresh(pid);
        }
    }

    /// A process exited: drop its cached maps and symbols, so caches stay bounded however
    /// many processes come and go. Its later lookups go through its parent.
    pub fn on_exit(&mut self, pid: u32) {
        self.mappings.forget(pid);
        self.symbols.forget(pid);
    }

    /// Fills in `fault.mapping` and `fault.symbol`.
    pub fn resolve(&mut self, fault: &mut Fault) {
        fault.mapping = Some(self.mapping(fault.pid, fault.address, Some(fault.ts_ns)));
        fault.symbol = self.symbol(fault.pid, fault.ip);
    }

    /// The label of the mapping holding `address` in `pid` (or, once it exited, in its
    /// nearest live ancestor's layout).
    pub fn mapping(&mut self, pid: u32, address: u64, ts_ns: Option<u64>) -> String {
        self.attribution(pid, address, ts_ns).to_string()
    }

    /// Whether `address` lies in a private file mapping of `pid`, where a first write copies
    /// the file's page (`FaultClass::with_mapping`). False where the mapping is unknown.
    pub fn in_private_file_mapping(&mut self, pid: u32, address: u64, ts_ns: Option<u64>) -> bool {
        match self.attribution(pid, address, ts_ns) {
            Attribution::Mapped(mapping) => mapping.is_private_file(),
            Attribution::Unmapped | Attribution::Gone => false,
        }
    }

    /// The mapping holding `address` in `pid` (or, once it exited, in its nearest live
    /// ancestor's layout).
    fn attribution(&mut self, pid: u32, address: u64, ts_ns: Option<u64>) -> Attribution {
        for current in lineage(&self.parents, pid) {
            let found = match ts_ns {
                Some(ts) if current == pid => self.mappings.resolve_at(current, address, ts),
                _ => self.mappings.resolve(current, address),
            };
            if found != Attribution::Gone {
                return found;
            }
        }
        Attribution::Gone
    }

    /// As `mapping`, without the offset: the name a summary groups faults by.
    pub fn mapping_label(&mut self, pid: u32, address: u64) -> String {
        mapping_name(&self.mapping(pid, address, None)).to_string()
    }

    fn symbol(&mut self, pid: u32, ip: u64) -> Option<String> {
        lineage(&self.parents, pid).find_map(|current| self.symbols.symbolize_one(current, ip))
    }

    /// The symbolized frames of user stack `stack_id` of `pid`, innermost first; `read_ips`
    /// reads its addresses from the kernel's stack map, if not cached. A stack that cannot be
    /// read has no frames and counts in [`Enricher::unread_stacks`] (the first is warned of).
    pub fn stack(
        &mut self,
        pid: u32,
        stack_id: u32,
        read_ips: impl FnOnce(u32) -> anyhow::Result<Vec<u64>>,
    ) -> Vec<String> {
        if let Some(frames) = self.stacks.get(&(pid, stack_id)) {
            return frames.clone();
        }
        let ips = match read_ips(stack_id) {
            Ok(ips) => ips,
            Err(error) => {
                if self.unread_stacks == 0 {
                    log::warn!("a user stack is missing (counted as not taken): {error:#}");
                }
                self.unread_stacks += 1;
                return Vec::new();
            }
        };
        let mut frames = Vec::with_capacity(ips.len());
        for ip in ips {
            let symbol = self.symbol(pid, ip);
            frames.push(symbol.unwrap_or_else(|| format!("{ip:#x}")));
        }
        if self.stacks.len() >= STACK_CACHE_CAP {
            self.stacks.clear();
        }
        self.stacks.insert((pid, stack_id), frames.clone());
        frames
    }
}

/// `pid`, then its parent, grandparent...: at most 8, as far as fork records tell.
fn lineage(parents: &HashMap<u32, u32>, pid: u32) -> impl Iterator<Item = u32> + '_ {
    std::iter::successors(Some(pid), |child| parents.get(child).copied()).take(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_stack_is_a_counted_loss() {
        let mut enricher = Enricher::default();
        let frames = enricher.stack(1, 7, |_| Err(anyhow::anyhow!("no such stack")));
        assert!(frames.is_empty());
        assert_eq!(enricher.unread_stacks(), 1);
        // Not remembered as empty: a later read may succeed.
        let frames = enricher.stack(1, 7, |_| Ok(vec![0x1234]));
        assert_eq!(frames.len(), 1);
        assert_eq!(enricher.unread_stacks(), 1);
    }

    #[test]
    fn lineage_walks_up_to_eight_ancestors() {
        let parents = HashMap::from([(3, 2), (2, 1)]);
        assert_eq!(lineage(&parents, 3).collect::<Vec<_>>(), [3, 2, 1]);
        assert_eq!(lineage(&parents, 9).collect::<Vec<_>>(), [9]);
        // A pid reused by its own descendant cannot loop forever.
        let cycle = HashMap::from([(1, 2), (2, 1)]);
        assert_eq!(lineage(&cycle, 1).count(), 8);
    }
}
