//! The kernel-to-user ring buffer, read from tokio, and the kernel side's loss counters.
use std::io;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use cow_trace_common::counter;
use tokio::io::unix::AsyncFd;

use crate::{
    event::{Event, Lost, StackLosses, decode},
    kernel::probes::Probes,
};

pub struct Ring {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl Ring {
    /// Takes the EVENTS map out of the loaded object.
    pub fn new(probes: &mut Probes) -> anyhow::Result<Ring> {
        let ring = probes.take_events()?;
        // SAFETY: the RingBuf owns its fd and keeps it open for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .context("registering the ring buffer with tokio")?;
        Ok(Ring { fd })
    }

    /// Waits until the kernel has written something.
    pub async fn readable(&mut self) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        // Readiness is edge-triggered: the caller drains everything before waiting again.
        guard.clear_ready();
        Ok(())
    }

    /// Hands every record now in the ring to `handle`, in order; stops early if `handle`
    /// returns false. Returns how many records were read.
    pub fn drain(&mut self, mut handle: impl FnMut(Event) -> bool) -> usize {
        let ring = self.fd.get_mut();
        let mut count = 0;
        while let Some(item) = ring.next() {
            count += 1;
            if let Some(event) = decode(&item)
                && !handle(event)
            {
                break;
            }
        }
        count
    }
}

/// Sums the per-CPU loss counters.
pub fn read_lost(probes: &Probes) -> anyhow::Result<Lost> {
    let counters = probes.counters()?;
    let sum = |index: u32| -> anyhow::Result<u64> {
        Ok(counters
            .get(&index, 0)
            .with_context(|| format!("reading counter {index}"))?
            .iter()
            .sum())
    };
    Ok(Lost {
        ring_full: sum(counter::RING_FULL)?,
        pending_full: sum(counter::PENDING_FULL)?,
        traced_full: sum(counter::TRACED_FULL)?,
        summary_full: sum(counter::SUMMARY_FULL)?,
        hist_full: sum(counter::HIST_FULL)?,
        stacks: StackLosses {
            unreadable: sum(counter::STACK_UNREADABLE)?,
            map_full: sum(counter::STACK_MAP_FULL)?,
            ring_full: sum(counter::STACK_RING_FULL)?,
            buffer_busy: sum(counter::STACK_BUFFER_BUSY)?,
            ..StackLosses::default()
        },
        // Counted apart, by the mapping events' reader.
        mapping_records: 0,
    })
}
