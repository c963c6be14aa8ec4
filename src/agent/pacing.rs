//! How much the uplink keeps in flight, in time rather than in alerts:
//! what the link delivers in a few of its shortest round trips (its
//! delivery rate and round trip both learned from the broker's answers),
//! and never less than a quarter of a second of it, nor than a floor.
//! Enough to keep a link busy through TCP's losses, and no more:
//! everything sent waits in the link's queues ahead of whatever comes
//! next, so an urgent alert queued at the post overtakes the backlog within
//! a few round trips instead of behind a fixed window of alerts (1,024
//! alerts of 1 KiB are two minutes of a 64 kbit/s link). On loopback a
//! quarter of a second is megabytes: the alert window is what limits.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes in flight at least (a few alerts).
pub const FLOOR: usize = 8 * 1024;

/// Round trips' worth of bytes kept in flight.
const ROUND_TRIPS: f64 = 2.0;
/// Time's worth of bytes kept in flight at least (a broker's commits make
/// answers come in batches: their round trip is not the network's).
const AT_LEAST: Duration = Duration::from_millis(250);

/// What a loss may hold an answer back at least: TCP's retransmission
/// timeout is a second or more on such links, doubled when the resent
/// packet is lost too. Declaring a stall costs a new handshake and sending
/// again what was in flight; with 2 s instead, a satellite link with 5 %
/// loss did that often enough to halve its throughput (docs/links.md).
const LOSS_ALLOWANCE: Duration = Duration::from_secs(4);
/// Round trips a loss recovery may take, when more than the above.
const LOSS_ROUND_TRIPS: u32 = 6;
/// Bytes of a TLS handshake with both certificate chains (a new
/// connection's first answer waits for them too).
const HANDSHAKE_BYTES: f64 = 8_000.0;
/// Round trips before a new connection's first request: TCP, TLS 1.3.
const HANDSHAKE_ROUND_TRIPS: u32 = 2;

/// The delivery rate is the best sample of the last this many round trips
/// (as BBR keeps it): a loss recovery that holds answers back for a while
/// is not a slower link, and must not shrink what is kept in flight — that
/// would slow the next round trip's answers, and so on down. Round trips
/// are counted in answers, not in time, so that what was learnt survives
/// the link's down-times.
const RATE_WINDOW_ROUNDS: u64 = 10;

/// What the pacer noted when an alert was sent, to measure the delivery
/// rate when its answer comes.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    sent: Instant,
    /// Bytes answered so far, when it was sent.
    delivered: u64,
    /// When the last of those was answered.
    delivered_at: Instant,
    /// When the last of those had been sent.
    first_sent: Instant,
}

/// The link as the uplink learns it from the broker's answers.
///
/// The delivery rate is sampled as BBR samples it: bytes answered between an
/// alert's send and its answer, over the longer of the time answers took
/// to come and the time the alerts took to be sent. The second bounds the
/// first: answers held back by a lost packet and then released at once
/// would otherwise measure a link many times faster than it is.
#[derive(Debug)]
pub struct Pacer {
    floor: usize,
    /// The shortest round trip seen.
    rtt_min: Option<Duration>,
    /// The best delivery rate sample of each recent round (round, bytes
    /// per second), newest last; the rate is their maximum.
    samples: VecDeque<(u64, f64)>,
    /// Round trips so far: one ends when an alert sent after the previous
    /// one ended is answered.
    round: u64,
    /// `delivered` when the current round began.
    round_start: u64,
    delivered: u64,
    delivered_at: Instant,
    first_sent: Instant,
}

impl Pacer {
    pub fn new(floor: usize, now: Instant) -> Pacer {
        Pacer {
            floor,
            rtt_min: None,
            samples: VecDeque::new(),
            round: 0,
            round_start: 0,
            delivered: 0,
            delivered_at: now,
            first_sent: now,
        }
    }

    fn rate(&self) -> Option<f64> {
        self.samples.iter().map(|&(_, r)| r).reduce(f64::max)
    }

    /// Bytes that may be in flight now.
    pub fn limit(&self) -> usize {
        match (self.rate(), self.rtt_min) {
            (Some(rate), Some(rtt)) => {
                let span = (rtt.as_secs_f64() * ROUND_TRIPS).max(AT_LEAST.as_secs_f64());
                ((rate * span) as usize).max(self.floor)
            }
            _ => self.floor,
        }
    }

    /// A new connection: what was learnt of the link (round trip, rate) is
    /// kept, it is most likely the same link.
    pub fn reconnected(&mut self, now: Instant) {
        self.delivered_at = now;
        self.first_sent = now;
    }

    /// An alert is sent `now`, with nothing else in flight if `idle`.
    pub fn sent(&mut self, now: Instant, idle: bool) -> Stamp {
        if idle {
            // The clock of a sample starts now, not at the last answer
            // (which may be long ago: the time in between was no delivery).
            self.delivered_at = now;
            self.first_sent = now;
        }
        Stamp {
            sent: now,
            delivered: self.delivered,
            delivered_at: self.delivered_at,
            first_sent: self.first_sent,
        }
    }

    /// How long the oldest unanswered alert may wait for its answer before
    /// the connection is taken for stalled, with `in_flight` bytes sent:
    /// its round trip, the link's time for what is in flight, and a loss
    /// recovery or two; on a new connection (`handshake`) the handshake's
    /// round trips and bytes too. `None` until the link has been measured
    /// (then the agent's `ack_timeout` applies).
    ///
    /// A link that goes down under an open connection leaves TCP
    /// retransmitting at doubling intervals — 1, 2, 4, 8 s —, so that when
    /// it comes back for a short while the connection may not notice; a
    /// new one, which the agent then opens, uses the window.
    pub fn stall_after(&self, in_flight: usize, handshake: bool) -> Option<Duration> {
        let rate = self.rate()?;
        let rtt = self.rtt_min?;
        let mut wait = rtt
            + Duration::from_secs_f64(in_flight as f64 / rate)
            + LOSS_ALLOWANCE.max(rtt * LOSS_ROUND_TRIPS);
        if handshake {
            wait += rtt * HANDSHAKE_ROUND_TRIPS + Duration::from_secs_f64(HANDSHAKE_BYTES / rate);
        }
        Some(wait)
    }

    /// The answer to an alert of `bytes` sent with `stamp` came `now`.
    pub fn answered(&mut self, now: Instant, stamp: Stamp, bytes: usize) {
        let rtt = now.saturating_duration_since(stamp.sent);
        let rtt_min = *self.rtt_min.get_or_insert(rtt);
        let rtt_min = rtt_min.min(rtt);
        self.rtt_min = Some(rtt_min);
        self.delivered += bytes as u64;
        self.delivered_at = now;
        self.first_sent = stamp.sent;
        if stamp.delivered >= self.round_start {
            self.round += 1;
            self.round_start = self.delivered;
        }
        let acked = now.saturating_duration_since(stamp.delivered_at);
        let sending = stamp.sent.saturating_duration_since(stamp.first_sent);
        let interval = acked.max(sending);
        // Shorter than a round trip, a sample measures bursts, not the link.
        if interval < rtt_min || interval.is_zero() {
            return;
        }
        let sample = (self.delivered - stamp.delivered) as f64 / interval.as_secs_f64();
        while self
            .samples
            .front()
            .is_some_and(|&(round, _)| round + RATE_WINDOW_ROUNDS < self.round)
        {
            self.samples.pop_front();
        }
        // One sample per round, its best: a few entries, whatever the rate.
        match self.samples.back_mut() {
            Some((round, best)) if *round == self.round => *best = best.max(sample),
            _ => self.samples.push_back((self.round, sample)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit the pacer settles at when a backlog of alerts of `size`
    /// drains over a link of `rate` bytes/s and round trip `rtt` (the
    /// link serialises what is sent; each answer comes a round trip after
    /// its alert left the link), with losses every `loss_every` alerts
    /// holding the next answers back for a second and releasing them at
    /// once, as TCP's retransmission does.
    fn converge(rate: f64, rtt: Duration, size: usize, loss_every: Option<u64>) -> usize {
        let t0 = Instant::now();
        let mut p = Pacer::new(FLOOR, t0);
        let mut clock = t0;
        let mut link_free = t0;
        let mut in_flight: VecDeque<(Instant, Stamp)> = VecDeque::new();
        let mut held_until = t0;
        for n in 0..3000u64 {
            while in_flight.len() * size < p.limit() || in_flight.is_empty() {
                let stamp = p.sent(clock, in_flight.is_empty());
                link_free = link_free.max(clock) + Duration::from_secs_f64(size as f64 / rate);
                let mut answer = link_free + rtt;
                if loss_every.is_some_and(|k| n % k == 0) {
                    held_until = answer + Duration::from_secs(1);
                }
                answer = answer.max(held_until);
                in_flight.push_back((answer, stamp));
            }
            let Some((at, stamp)) = in_flight.pop_front() else {
                break;
            };
            clock = clock.max(at);
            p.answered(clock, stamp, size);
        }
        p.limit()
    }

    #[test]
    fn in_flight_settles_near_two_bandwidth_delay_products() {
        // Satellite: 8 kB/s × 600 ms = 4.8 kB; twice that.
        let sat = converge(8_000.0, Duration::from_millis(600), 1_100, None);
        // (The round trip measured includes the alert's own 137 ms on the link.)
        assert!((8_000..=12_500).contains(&sat), "satellite: {sat}");
        // A fast local link: room for thousands of alerts.
        let local = converge(50_000_000.0, Duration::from_millis(2), 1_100, None);
        assert!(local > 150_000, "loopback: {local}");
    }

    #[test]
    fn answers_released_at_once_after_a_loss_do_not_inflate_the_rate() {
        // One loss every 20 alerts holds answers back a second, then they
        // all come at once: the rate is still the link's.
        let sat = converge(8_000.0, Duration::from_millis(600), 1_100, Some(20));
        assert!(
            (8_000..=12_000).contains(&sat),
            "satellite with losses: {sat}"
        );
    }

    #[test]
    fn a_stall_is_declared_after_the_link_time_of_what_is_in_flight_and_a_loss() {
        let t0 = Instant::now();
        let mut p = Pacer::new(FLOOR, t0);
        assert_eq!(p.stall_after(10_000, false), None, "not measured yet");
        // Satellite-like: 10 kB/s of answers, 600 ms round trip.
        // One alert of 1 kB sent every 100 ms, answered 600 ms later.
        let mut stamps = VecDeque::new();
        for i in 0..46u64 {
            let now = t0 + Duration::from_millis(100 * i);
            if i >= 6 {
                p.answered(now, stamps.pop_front().expect("sent"), 1_000);
            }
            stamps.push_back(p.sent(now, stamps.is_empty()));
        }
        let steady = p.stall_after(10_000, false).expect("measured");
        // 0.6 s + 1 s for 10 kB + 4 s for a loss.
        assert!((5_400..=5_800).contains(&steady.as_millis()), "{steady:?}");
        let fresh = p.stall_after(10_000, true).expect("measured");
        // + two round trips and the handshake's 8 kB.
        assert!((7_300..=7_700).contains(&fresh.as_millis()), "{fresh:?}");
        // What was learnt stays over a reconnection.
        p.reconnected(t0 + Duration::from_secs(10));
        assert_eq!(p.stall_after(10_000, false), Some(steady));
    }

    #[test]
    fn it_starts_at_the_floor() {
        assert_eq!(Pacer::new(FLOOR, Instant::now()).limit(), FLOOR);
    }
}
