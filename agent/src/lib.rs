//! `kedge-agent`: the node agent. Today it is the runtime half: a CRI
//! implementation over youki's libcontainer (`runtime`), the image store
//! (`images`), and the pod workers that run static pods (`pods`).

pub mod fsutil;
pub mod images;
pub mod runtime;
