//! Hosts in network namespaces a test makes for itself: a bridge in the test's namespace, and
//! per host a namespace joined to it by a veth pair, so each daemon has its own address and
//! its link can be cut and restored. Needs root and iproute2; everything is removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The test's little network.
pub struct Net {
    tag: String,
    /// The first three octets of the /24 the hosts share.
    prefix: String,
    hosts: usize,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    assert!(ip(args), "ip {} failed", args.join(" "));
}

impl Net {
    /// `hosts` namespaces on a fresh bridge; `None` when not root (the namespaces need it),
    /// while a root that cannot make them fails the test.
    pub fn new(hosts: usize) -> Option<Net> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: network namespaces need root");
            return None;
        }
        // Names and a subnet of this test's own: the process id tells test binaries apart, a
        // counter the tests of one binary (they run in parallel).
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let tag = format!("rp{:x}{n}", pid % 0x10_0000);
        let prefix = format!("10.{}.{}", 100 + pid % 100, (pid / 100 * 8 + n) % 250);
        let net = Net { tag, prefix, hosts };
        let bridge = net.bridge();
        must(&["link", "add", &bridge, "type", "bridge"]);
        must(&["addr", "add", &format!("{}/24", net.gateway()), "dev", &bridge]);
        must(&["addr", "add", &format!("{}/24", net.store_ip()), "dev", &bridge]);
        must(&["link", "set", &bridge, "up"]);
        for i in 0..hosts {
            let (ns, outside, inside) = (net.netns(i), net.outside(i), format!("{}i", net.outside(i)));
            must(&["netns", "add", &ns]);
            must(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            must(&["link", "set", &inside, "netns", &ns]);
            must(&["link", "set", &outside, "master", &bridge]);
            must(&["link", "set", &outside, "up"]);
            must(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", net.host_ip(i)), "dev", &inside]);
            must(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"]);
            must(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        Some(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn outside(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }

    /// The address of the test's own namespace on the bridge (where it reaches the hosts).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A second address of the test's namespace, for the lease store: blocking it cuts a host
    /// off from the store while the test still reaches the host.
    pub fn store_ip(&self) -> String {
        format!("{}.2", self.prefix)
    }

    /// Host `i`'s namespace.
    pub fn netns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Host `i`'s address.
    pub fn host_ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 10 + i)
    }

    /// Cuts host `i` off from everything (its link to the bridge goes down).
    pub fn cut(&self, i: usize) {
        must(&["link", "set", &self.outside(i), "down"]);
    }

    /// Restores host `i`'s link.
    pub fn heal(&self, i: usize) {
        must(&["link", "set", &self.outside(i), "up"]);
    }

    /// Host `i` can no longer reach `addr` (a blackhole route in its namespace); everything
    /// else still flows.
    pub fn block(&self, i: usize, addr: &str) {
        must(&["netns", "exec", &self.netns(i), "ip", "route", "add", "blackhole", &format!("{addr}/32")]);
    }

    /// Undoes [`Net::block`].
    pub fn unblock(&self, i: usize, addr: &str) {
        must(&["netns", "exec", &self.netns(i), "ip", "route", "del", "blackhole", &format!("{addr}/32")]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            ip(&["link", "del", &self.outside(i)]);
            ip(&["netns", "del", &self.netns(i)]);
        }
        ip(&["link", "del", &self.bridge()]);
    }
}
