//! Who may do what: API verbs, RBAC-like allow rules per bearer token, and the record of the
//! requests a token made.

use crate::kube::model::Kind;

/// An API verb, for permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// GET one object.
    Get,
    /// GET a collection.
    List,
    /// GET a collection with `watch`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH (including server-side apply).
    Patch,
    /// DELETE one object.
    Delete,
    /// DELETE a collection.
    DeleteCollection,
}

impl Verb {
    /// The RBAC verb name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }
}

/// One allow rule: empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rule {
    /// Allowed verbs (empty: all).
    pub verbs: Vec<Verb>,
    /// Allowed resources (empty: both).
    pub resources: Vec<Kind>,
    /// Namespaces the rule applies in (empty: every namespace and the cluster scope).
    pub namespaces: Vec<String>,
    /// Object names the rule is limited to, as RBAC `resourceNames` (empty: any). A limited
    /// rule never matches a request without a name (list, watch, create by POST).
    pub names: Vec<String>,
}

/// What a bearer token may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Permissions {
    /// The user name reported in 403 messages.
    pub user: String,
    /// Allow rules; a request is allowed when one rule matches.
    pub rules: Vec<Rule>,
}

impl Permissions {
    /// Everything, everywhere.
    pub fn admin() -> Self {
        Self {
            user: "keyfleet-test-admin".to_owned(),
            rules: vec![Rule::default()],
        }
    }

    /// Nothing until rules are added.
    pub fn none(user: &str) -> Self {
        Self {
            user: user.to_owned(),
            rules: Vec::new(),
        }
    }

    /// Adds a rule allowing `verbs` on `resources` in `namespaces` (empty slices: any).
    pub fn allow(mut self, verbs: &[Verb], resources: &[Kind], namespaces: &[&str]) -> Self {
        self.rules.push(Rule {
            verbs: verbs.to_vec(),
            resources: resources.to_vec(),
            namespaces: namespaces.iter().map(|ns| (*ns).to_owned()).collect(),
            names: Vec::new(),
        });
        self
    }

    /// Adds a rule like [`Self::allow`] limited to the objects named `names` (RBAC
    /// `resourceNames`).
    pub fn allow_named(
        mut self,
        verbs: &[Verb],
        resources: &[Kind],
        namespaces: &[&str],
        names: &[&str],
    ) -> Self {
        self.rules.push(Rule {
            verbs: verbs.to_vec(),
            resources: resources.to_vec(),
            namespaces: namespaces.iter().map(|ns| (*ns).to_owned()).collect(),
            names: names.iter().map(|name| (*name).to_owned()).collect(),
        });
        self
    }

    /// True when some rule allows `verb` on `kind` in `namespace` (None: cluster scope), for a
    /// request that names no object.
    pub fn allows(&self, verb: Verb, kind: Kind, namespace: Option<&str>) -> bool {
        self.allows_named(verb, kind, namespace, None)
    }

    /// True when some rule allows `verb` on `kind` in `namespace` for the object `name` (None:
    /// a request without a name).
    pub fn allows_named(&self, verb: Verb, kind: Kind, namespace: Option<&str>, name: Option<&str>) -> bool {
        self.rules.iter().any(|rule| {
            (rule.verbs.is_empty() || rule.verbs.contains(&verb))
                && (rule.resources.is_empty() || rule.resources.contains(&kind))
                && (rule.namespaces.is_empty()
                    || namespace.is_some_and(|ns| rule.namespaces.iter().any(|allowed| allowed == ns)))
                && (rule.names.is_empty() || name.is_some_and(|name| rule.names.iter().any(|n| n == name)))
        })
    }
}

/// An authorized API request, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestRecord {
    /// The token's user.
    pub user: String,
    /// The verb.
    pub verb: Verb,
    /// The resource.
    pub kind: Kind,
    /// The namespace (None: cluster scope; a Namespace object is in itself).
    pub namespace: Option<String>,
    /// The object named by the request, if any.
    pub name: Option<String>,
}
