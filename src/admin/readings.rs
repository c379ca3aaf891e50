//! The metrics registry at one moment, read as a scrape would see it.
//!
//! The status page and its history show numbers an operator will compare with `/metrics`
//! and with dashboards, so they are not counted a second time anywhere: they are taken from
//! the registry's own gathered families. Reading through a metric handle
//! (`with_label_values(..).get()`) would create a series for every label value asked about;
//! gathering reads only the series that exist.

use std::collections::{BTreeMap, HashMap};

use crate::metrics::Metrics;

/// One series: its labels (name, value) and its value.
type Series = (Vec<(String, String)>, f64);

/// Counter and gauge values by metric name (histograms are not read).
pub struct Readings {
    /// Every series of each counter or gauge family.
    families: HashMap<String, Vec<Series>>,
}

impl Readings {
    /// Gather the registry now.
    pub fn take(metrics: &Metrics) -> Readings {
        let mut families = HashMap::new();
        for family in metrics.gather() {
            let series: Vec<Series> = family
                .get_metric()
                .iter()
                .filter_map(|m| {
                    let value = if let Some(c) = m.counter.as_ref() {
                        c.value()
                    } else if let Some(g) = m.gauge.as_ref() {
                        g.value()
                    } else {
                        return None;
                    };
                    let labels = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_string(), l.value().to_string()))
                        .collect();
                    Some((labels, value))
                })
                .collect();
            families.insert(family.name().to_string(), series);
        }
        Readings { families }
    }

    /// The series of `name` whose labels include every pair of `with`.
    fn matching<'a>(
        &'a self,
        name: &str,
        with: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Series> + 'a {
        self.families
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |(labels, _)| {
                with.iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
    }

    /// The sum of the series of `name` whose labels include every pair of `with` (0 if none
    /// exists yet: a counter nobody touched is 0).
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|(_, v)| v).sum()
    }

    /// The series of `name` matching `with`, summed by the value of `label` (series without
    /// it are left out); only non-zero sums.
    pub fn by(&self, name: &str, with: &[(&str, &str)], label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (labels, value) in self.matching(name, with) {
            if let Some((_, v)) = labels.iter().find(|(k, _)| k == label) {
                *out.entry(v.clone()).or_insert(0.0) += value;
            }
        }
        out.retain(|_, v| *v != 0.0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_registry_renders_without_creating_series() {
        let m = Metrics::new();
        m.backend_logins_total
            .with_label_values(&["node1", "success"])
            .inc_by(3);
        m.backend_logins_total
            .with_label_values(&["node1", "failure"])
            .inc();
        m.backend_connections_open
            .with_label_values(&["node1"])
            .set(2);
        m.listener_refusals_total
            .with_label_values(&["c2s", "source_limit"])
            .inc_by(4);
        let r = Readings::take(&m);
        let login = |result| {
            r.sum(
                "xmpp_lb_backend_logins_total",
                &[("backend", "node1"), ("result", result)],
            )
        };
        assert_eq!(login("success"), 3.0);
        assert_eq!(login("failure"), 1.0);
        assert_eq!(r.sum("xmpp_lb_backend_logins_total", &[]), 4.0);
        assert_eq!(
            r.sum("xmpp_lb_backend_connections_open", &[("backend", "node1")]),
            2.0
        );
        assert_eq!(
            r.sum("xmpp_lb_backend_connections_open", &[("backend", "node2")]),
            0.0
        );
        assert_eq!(
            r.by(
                "xmpp_lb_listener_refusals_total",
                &[("listener", "c2s")],
                "reason"
            ),
            BTreeMap::from([("source_limit".to_string(), 4.0)])
        );
        assert!(
            !m.render().contains("backend=\"node2\""),
            "reading created no series"
        );
    }
}
