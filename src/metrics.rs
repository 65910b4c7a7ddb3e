//! GrootFS's metrics: dropsonde `ValueMetric` envelopes sent over UDP to the metron agent named
//! by `--metron-endpoint` / `metron_endpoint`, one datagram each, with GrootFS's names and units
//! (durations in nanoseconds, sizes in bytes). The origin is `grootfs`, as GrootFS sends it, so
//! a cell's dashboards and alerts keep working when nestfs takes its place.

use std::net::UdpSocket;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::logging::Logger;

const ORIGIN: &str = "grootfs";

/// sonde-go's `events.Envelope` (proto2), the fields a value metric uses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(string, required, tag = "1")]
    pub origin: String,
    /// `EventType`: 6 is ValueMetric.
    #[prost(int32, required, tag = "2")]
    pub event_type: i32,
    #[prost(int64, optional, tag = "6")]
    pub timestamp: Option<i64>,
    #[prost(message, optional, tag = "9")]
    pub value_metric: Option<ValueMetric>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueMetric {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(double, required, tag = "2")]
    pub value: f64,
    #[prost(string, required, tag = "3")]
    pub unit: String,
}

const VALUE_METRIC: i32 = 6;

/// Sends metrics when an endpoint is configured; otherwise does nothing. Failures are logged,
/// never fatal: metrics must not fail a create.
pub struct Metrics {
    target: Option<(UdpSocket, String)>,
    log: Logger,
}

impl Metrics {
    pub fn new(endpoint: Option<&str>, log: &Logger) -> Metrics {
        let target = endpoint.and_then(|e| match UdpSocket::bind("0.0.0.0:0") {
            Ok(s) => Some((s, e.to_string())),
            Err(err) => {
                log.error(
                    "failed-to-initialize-metrics-emitter",
                    json!({ "error": err.to_string() }),
                );
                None
            }
        });
        Metrics {
            target,
            log: log.clone(),
        }
    }

    /// Whether metrics go anywhere: sizes that take a walk of the store are measured only then.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// A size, as GrootFS's `TryEmitUsage`.
    pub fn usage(&self, name: &str, value: u64, unit: &str) {
        self.send(name, value as f64, unit);
    }

    /// The time since `from`, in nanoseconds, as GrootFS's `TryEmitDurationFrom`.
    pub fn duration(&self, name: &str, from: Instant) {
        self.send(name, from.elapsed().as_nanos() as f64, "nanos");
    }

    fn send(&self, name: &str, value: f64, unit: &str) {
        let Some((socket, endpoint)) = &self.target else {
            return;
        };
        let envelope = envelope(name, value, unit);
        if let Err(e) = socket.send_to(&prost::Message::encode_to_vec(&envelope), endpoint) {
            self.log.error(
                "failed-to-emit-metric",
                json!({ "key": name, "value": value, "error": e.to_string() }),
            );
        }
    }
}

pub fn envelope(name: &str, value: f64, unit: &str) -> Envelope {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    Envelope {
        origin: ORIGIN.into(),
        event_type: VALUE_METRIC,
        timestamp: Some(now),
        value_metric: Some(ValueMetric {
            name: name.into(),
            value,
            unit: unit.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes Go's protobuf writes for the same envelope, field by field.
    #[test]
    fn encodes_as_dropsonde_does() {
        let e = Envelope {
            timestamp: Some(1),
            ..envelope("X", 2.0, "ns")
        };
        let mut want = vec![0x0a, 7];
        want.extend_from_slice(b"grootfs");
        want.extend_from_slice(&[0x10, 6, 0x30, 1, 0x4a, 16, 0x0a, 1, b'X', 0x11]);
        want.extend_from_slice(&2.0f64.to_le_bytes());
        want.extend_from_slice(&[0x1a, 2, b'n', b's']);
        assert_eq!(prost::Message::encode_to_vec(&e), want);
    }
}
