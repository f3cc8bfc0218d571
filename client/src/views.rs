//! Every instance's view of the placement, side by side (`poc-client views`).
//!
//! Like Ringpop's membership checksums, the epoch is what is compared: instances that hold the
//! same epoch route every id alike. Views come either from each instance directly (`--instance`
//! URLs), or through Envoy's operator listener from one instance's `/placement`, which lists what
//! it last heard from every peer.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use poc_routing_wire::PlacementAnswer;
use serde::Serialize;

use crate::api::Api;

/// One instance's view, or why it could not be read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InstanceView {
    /// Where the view was read: an instance URL, or `via <url>` for a peer's report.
    pub source: String,
    pub instance: Option<u64>,
    pub state: Option<String>,
    pub epoch: Option<String>,
    /// Known when read directly; a peer's report carries only the epoch.
    pub members: Option<Vec<u64>>,
    pub error: Option<String>,
}

impl InstanceView {
    fn from_placement(source: String, answer: &PlacementAnswer) -> Self {
        Self {
            source,
            instance: answer.instance,
            state: Some(answer.state.as_str().to_owned()),
            epoch: answer.epoch.clone(),
            members: Some(answer.members.clone()),
            error: None,
        }
    }

    fn failed(source: String, error: String) -> Self {
        Self {
            source,
            instance: None,
            state: None,
            epoch: None,
            members: None,
            error: Some(error),
        }
    }
}

async fn placement(api: &Api) -> Result<PlacementAnswer, String> {
    match api.get_path("/placement").await {
        Ok((200, body)) => {
            serde_json::from_value(body).map_err(|e| format!("not a /placement answer: {e}"))
        }
        Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads `/placement` from every instance URL, with the operator's `token`.
pub async fn direct(urls: &[String], token: Option<String>) -> Vec<InstanceView> {
    let reads = urls.iter().map(|url| {
        let token = token.clone();
        async move {
            match placement(&Api::new(url).with_token(token)).await {
                Ok(body) => InstanceView::from_placement(url.clone(), &body),
                Err(e) => InstanceView::failed(url.clone(), e),
            }
        }
    });
    futures::future::join_all(reads).await
}

/// Reads one instance's `/placement` through `api` (Envoy's operator listener), and its report
/// of every peer.
pub async fn via(api: &Api) -> Vec<InstanceView> {
    let body = match placement(api).await {
        Ok(body) => body,
        Err(e) => return vec![InstanceView::failed(api.base().to_owned(), e)],
    };
    let mut views = vec![InstanceView::from_placement(
        format!("{}/placement", api.base()),
        &body,
    )];
    let via = body
        .instance
        .map_or_else(|| "?".to_owned(), |i| i.to_string());
    for peer in &body.peers {
        views.push(InstanceView {
            source: format!("via instance {via}"),
            instance: Some(peer.instance),
            state: peer.state.map(|s| s.as_str().to_owned()),
            epoch: peer.epoch.clone(),
            members: None,
            error: peer
                .state
                .is_none()
                .then(|| "did not answer its last probe".to_owned()),
        });
    }
    views
}

/// The epoch most views hold, if any holds one.
pub fn majority(views: &[InstanceView]) -> Option<&str> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for epoch in views.iter().filter_map(|v| v.epoch.as_deref()) {
        *counts.entry(epoch).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(epoch, _)| epoch)
}

/// Whether every view was read and holds the same epoch.
pub fn agree(views: &[InstanceView]) -> bool {
    !views.is_empty()
        && views.iter().all(|v| v.error.is_none() && v.epoch.is_some())
        && views.windows(2).all(|w| w[0].epoch == w[1].epoch)
}

/// The distinct member lists the views hold, sorted, on one line (`[1, 2, 3]`, or several
/// side by side when views differ; `[]` when no view named its members). Only views read from
/// an instance's own `/placement` carry a member list. Two calls compare equal exactly when the
/// instances hold the same member lists.
pub fn member_lists(views: &[InstanceView]) -> String {
    let lists: std::collections::BTreeSet<&Vec<u64>> =
        views.iter().filter_map(|v| v.members.as_ref()).collect();
    let shown: Vec<String> = lists
        .iter()
        .map(|m| {
            let members: Vec<String> = m.iter().map(u64::to_string).collect();
            format!("[{}]", members.join(", "))
        })
        .collect();
    if shown.is_empty() {
        "[]".to_owned()
    } else {
        shown.join(" ")
    }
}

/// A table: one row per instance, with the rows that disagree with the majority flagged.
pub fn render(views: &[InstanceView]) -> String {
    let common = majority(views);
    let mut out = format!(
        "{:<9} {:<8} {:<17} {:<20} {:<10} {}\n",
        "INSTANCE", "STATE", "EPOCH", "MEMBERS", "AGREES", "SOURCE"
    );
    for v in views {
        let agrees = match (&v.error, v.epoch.as_deref()) {
            (Some(_), _) | (None, None) => "UNKNOWN",
            (None, e) if e == common => "yes",
            _ => "NO",
        };
        let members = v.members.as_ref().map_or_else(
            || "-".to_owned(),
            |m| m.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        );
        let _ = writeln!(
            out,
            "{:<9} {:<8} {:<17} {:<20} {:<10} {}{}",
            v.instance.map_or_else(|| "?".to_owned(), |i| i.to_string()),
            v.state.as_deref().unwrap_or("?"),
            v.epoch.as_deref().unwrap_or("-"),
            members,
            agrees,
            v.source,
            v.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "{}",
        if agree(views) {
            format!("all {} views agree", views.len())
        } else {
            "views DISAGREE".to_owned()
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(instance: u64, epoch: Option<&str>) -> InstanceView {
        InstanceView {
            source: format!("http://i{instance}"),
            instance: Some(instance),
            state: Some("member".into()),
            epoch: epoch.map(str::to_owned),
            members: Some(vec![1, 2]),
            error: None,
        }
    }

    #[test]
    fn disagreement_is_flagged() {
        let same = [view(1, Some("aa")), view(2, Some("aa"))];
        assert!(agree(&same));
        assert!(render(&same).contains("all 2 views agree"));
        let split = [
            view(1, Some("aa")),
            view(2, Some("aa")),
            view(3, Some("bb")),
        ];
        assert!(!agree(&split));
        assert_eq!(majority(&split), Some("aa"));
        let table = render(&split);
        assert!(table.contains("views DISAGREE"), "{table}");
        let row3 = table.lines().find(|l| l.starts_with('3')).unwrap();
        assert!(row3.contains(" NO "), "{row3}");
        let unknown = [
            view(1, Some("aa")),
            InstanceView::failed("x".into(), "down".into()),
        ];
        assert!(!agree(&unknown));
        assert!(!agree(&[]));
    }

    #[test]
    fn member_lists_are_distinct_and_sorted() {
        let mut a = view(1, Some("aa"));
        a.members = Some(vec![1, 2, 3]);
        let mut b = view(2, Some("bb"));
        b.members = Some(vec![1, 2]);
        let peer = InstanceView {
            members: None,
            ..view(3, Some("aa"))
        };
        assert_eq!(
            member_lists(&[a.clone(), b.clone(), a.clone(), peer.clone()]),
            "[1, 2] [1, 2, 3]"
        );
        assert_eq!(member_lists(&[a, peer.clone()]), "[1, 2, 3]");
        assert_eq!(member_lists(&[peer]), "[]");
    }
}
