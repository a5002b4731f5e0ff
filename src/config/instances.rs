//! `[instances]`: how a segmentation's foreground probability is cut into separate objects
//! for `--emit instances` (and `aestream eval`'s instance scores): the threshold, the
//! smoothing, how deep a distance-transform peak must be to seed its own object, and the
//! smallest object kept. The method is `stage::instances`'; these are only its knobs.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

/// Settings of the instance labelling (a seeded watershed on the distance transform).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstancesConfig {
    /// Foreground where the (smoothed) probability is above this.
    pub threshold: f32,
    /// σ in pixels of the Gaussian that smooths the probability before the threshold
    /// (0 = none): a ragged edge makes spurious distance peaks.
    pub smooth: f32,
    /// How much higher (in pixels of distance to the background) a peak of the distance
    /// transform must rise above the saddle to its neighbour to seed an object of its own
    /// (the h of the h-maxima): lower splits more.
    pub h: f32,
    /// Objects of fewer pixels than this are dropped (set to background).
    pub min_area: u32,
}

impl Default for InstancesConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            smooth: 0.0,
            h: 1.0,
            min_area: 0,
        }
    }
}

impl InstancesConfig {
    /// Left out of the settings hash when default, so the versions of pipelines that do not
    /// set it stay as they were.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Each knob within a range that means something for a picture.
    pub fn validate(&self) -> Result<(), Invalid> {
        // Strictly inside (0, 1): at 0 or 1 the foreground would be everything or nothing.
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(Invalid::new(
                "instances.threshold",
                self.threshold,
                "must be above 0 and below 1",
            ));
        }
        within("instances.smooth", self.smooth, 0.0, 16.0)?;
        within("instances.h", self.h, 0.0, 256.0)?;
        within("instances.min_area", self.min_area, 0, 1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        assert!(InstancesConfig::default().validate().is_ok());
        let bad = [
            InstancesConfig {
                threshold: 1.0,
                ..Default::default()
            },
            InstancesConfig {
                threshold: f32::NAN,
                ..Default::default()
            },
            InstancesConfig {
                smooth: -1.0,
                ..Default::default()
            },
            InstancesConfig {
                h: f32::INFINITY,
                ..Default::default()
            },
            InstancesConfig {
                min_area: u32::MAX,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
