//! Placeholder of login-storm admission (replaced by the real implementation).
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionConfig {
    pub max_negotiations: Option<usize>,
    pub max_logins_per_second: Option<f64>,
    pub queue: usize,
    pub queue_timeout: std::time::Duration,
}
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("admission queue full")]
    QueueFull,
    #[error("waited too long for admission")]
    Timeout,
}
pub struct Admission;
pub struct Permit;
impl Admission {
    pub fn new(_cfg: AdmissionConfig) -> Admission {
        Admission
    }
    pub fn reconfigure(&self, _cfg: AdmissionConfig) {}
    pub async fn admit(&self) -> Result<Permit, Refused> {
        Ok(Permit)
    }
    pub fn waiting(&self) -> usize {
        0
    }
    pub fn negotiating(&self) -> usize {
        0
    }
}
