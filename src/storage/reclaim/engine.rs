//! The Docker half of a scan: session containers whose server is gone, and `deskvm-runtime`
//! and `deskvm-guest` images of other recipes or QEMU builds that no container uses. Only
//! containers and images with deskvm's labels are looked at; nothing is pruned globally.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder};
use bollard::Docker;

use super::{Candidate, Current, Kind, Request, Scan};
use crate::storage::owner::{Liveness, Owner, GUEST_REPO, IMAGE_REPO, LABEL_PID, LABEL_VERSION};

pub(super) async fn scan(docker: &Docker, current: &Current, req: &Request, scan: &mut Scan) {
    if req.wants(Kind::OrphanSession) {
        containers(docker, scan).await;
    }
    runtime_images(docker, current, req, scan).await;
}

async fn containers(docker: &Docker, scan: &mut Scan) {
    let filters = HashMap::from([("label", vec![LABEL_PID.to_string()])]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let list = match docker.list_containers(Some(opts)).await {
        Ok(l) => l,
        Err(e) => {
            scan.skip("Docker containers", format!("could not list them: {e}"));
            return;
        }
    };
    for c in list {
        let labels = c.labels.unwrap_or_default();
        let name = c
            .names
            .and_then(|n| n.first().map(|s| s.trim_start_matches('/').to_string()))
            .or(c.id)
            .unwrap_or_default();
        let Some(owner) = Owner::from_labels(&labels) else {
            continue;
        };
        let why = match owner.liveness() {
            Liveness::Alive => continue,
            Liveness::Unknown(why) => {
                scan.skip(format!("container {name}"), why);
                continue;
            }
            Liveness::Dead(why) => why,
        };
        // The same session's runtime dir, if the scan found it: one item for both.
        let session = owner.session.clone();
        let same = scan
            .candidates
            .iter_mut()
            .find(|x| x.kind == Kind::OrphanSession && x.session.is_some() && x.session == session);
        if let Some(item) = same {
            item.container = Some(name);
            continue;
        }
        scan.candidates.push(Candidate {
            kind: Kind::OrphanSession,
            session,
            path: None,
            container: Some(name),
            process: None,
            image: None,
            tags: Vec::new(),
            bytes: 0,
            why,
            owner: Some(owner),
        });
    }
}

async fn runtime_images(docker: &Docker, current: &Current, req: &Request, scan: &mut Scan) {
    // By deskvm's label, so untagged leftovers of a rebuild are found too.
    let filters = HashMap::from([("label", vec![LABEL_VERSION.to_string()])]);
    let opts = ListImagesOptionsBuilder::new().filters(&filters).build();
    let images = match docker.list_images(Some(opts)).await {
        Ok(l) => l,
        Err(e) => {
            scan.skip("Docker images", format!("could not list them: {e}"));
            return;
        }
    };
    for img in images {
        let bytes = img.size.max(0) as u64;
        scan.usage.runtime_images.add(bytes);
        let what = format!("image {} ({})", short_id(&img.id), img.repo_tags.join(", "));
        let ours = |repo: &str| {
            img.repo_tags
                .iter()
                .any(|t| t.starts_with(&format!("{repo}:")))
        };
        let (runtime, guest) = (ours(IMAGE_REPO), ours(GUEST_REPO));
        if !img.labels.contains_key(LABEL_VERSION)
            || !(img.repo_tags.is_empty() || runtime || guest)
        {
            scan.skip(what, "not a deskvm runtime or guest image");
            continue;
        }
        let current_tag = img.repo_tags.contains(&current.runtime_tag)
            || img.repo_tags.iter().any(|t| current.guest_tags.contains(t));
        if current_tag || !req.wants(Kind::RuntimeImage) {
            continue;
        }
        // A guest image is the current one of some build this deskvm cannot judge (no engine
        // said which QEMU it runs): kept.
        if guest && !current.builds_known {
            scan.skip(
                what,
                "a guest image of a QEMU build that could not be checked",
            );
            continue;
        }
        if img.repo_tags.iter().any(|t| scan.images_in_use.contains(t)) {
            scan.skip(what, "a live deskvm server or session runs from it");
            continue;
        }
        let filters = HashMap::from([("ancestor", vec![img.id.clone()])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        match docker.list_containers(Some(opts)).await {
            Ok(users) if users.is_empty() => {}
            Ok(users) => {
                let names: Vec<String> = users
                    .into_iter()
                    .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
                    .collect();
                scan.skip(what, format!("used by {}", names.join(", ")));
                continue;
            }
            Err(e) => {
                scan.skip(what, format!("could not list its containers: {e}"));
                continue;
            }
        }
        scan.candidates.push(Candidate {
            kind: Kind::RuntimeImage,
            session: None,
            path: None,
            container: None,
            process: None,
            image: Some(img.id.clone()),
            tags: img.repo_tags.clone(),
            bytes,
            why: if guest {
                "a guest image of another guest recipe, runtime recipe or QEMU build".to_string()
            } else {
                format!(
                    "a runtime image of another recipe; this deskvm runs {}",
                    current.runtime_tag
                )
            },
            owner: None,
        });
    }
}

pub fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// Whether the engine says the container no longer exists.
pub(super) async fn container_gone(docker: &Docker, name: &str) -> Result<bool, String> {
    match docker.inspect_container(name, None).await {
        Ok(_) => Ok(false),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) async fn image_gone(docker: &Docker, id: &str) -> Result<bool, String> {
    match docker.inspect_image(id).await {
        Ok(_) => Ok(false),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}
