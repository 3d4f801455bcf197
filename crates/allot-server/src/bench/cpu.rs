//! Where a scenario's CPU went: this process (Allot and the load generator, which share it) and
//! the rest of the machine (PostgreSQL, Redis and whatever else runs here), read from
//! `/proc/self/stat` and `/proc/stat` in clock ticks. Linux only; elsewhere nothing is reported.

/// CPU time used so far, in clock ticks (USER_HZ).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    own_ticks: u64,
    machine_ticks: u64,
}

/// Clock ticks a second: USER_HZ, 100 on every Linux architecture this runs on.
const TICKS_PER_S: f64 = 100.0;

impl Sample {
    /// Now, or `None` when `/proc` cannot be read.
    pub fn now() -> Option<Sample> {
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command (which may hold spaces) start at the last ')'.
        let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command.
        let own_ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = machine.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // user, nice, system, irq, softirq: busy time (idle, iowait and the hypervisor's steal
        // are not work done here).
        let machine_ticks = [0usize, 1, 2, 5, 6].iter().filter_map(|i| cpu.get(*i)).sum();
        Some(Sample { own_ticks, machine_ticks })
    }

    /// CPU microseconds per operation since `earlier`: (this process, the rest of the machine).
    pub fn per_op_us(&self, earlier: &Sample, ops: f64) -> (f64, f64) {
        let us = |ticks: u64| ticks as f64 / TICKS_PER_S * 1e6 / ops.max(1.0);
        let own = self.own_ticks.saturating_sub(earlier.own_ticks);
        let machine = self.machine_ticks.saturating_sub(earlier.machine_ticks);
        (us(own), us(machine.saturating_sub(own)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_time_grows_with_work_and_is_part_of_the_machine() {
        let Some(before) = Sample::now() else { return };
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = Sample::now().expect("read once, read again");
        assert!(after.own_ticks > before.own_ticks, "100 ms of spinning shows as CPU time");
        assert!(after.machine_ticks > before.machine_ticks, "the machine was busy too");
        let (own_us, _) = after.per_op_us(&before, 1.0);
        assert!(own_us > 0.0);
    }
}
