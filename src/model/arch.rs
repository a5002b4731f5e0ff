//! Which network a pipeline runs, as a type: [`Arch`] holds one architecture together with its
//! own settings, so a denoiser cannot be handed a dense autoencoder's layer list and every
//! `match` over architectures is checked for completeness by the compiler.
//!
//! [`ArchKind`] is the bare name, the one place where the names written in pipeline files
//! (`arch = "unet-denoiser"`) are spelled. Parsing a pipeline's `[model]` table into an
//! [`Arch`] is the configuration's job (`config::model`); this module only says what each
//! architecture is and needs.

use super::conv_ae::ConvAeConfig;
use super::denoise::DenoiserConfig;
use super::dense::DenseAeConfig;
use super::unet::UNetConfig;
use super::Task;

/// An architecture's name, as pipeline files spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchKind {
    UnetDenoiser,
    UnetInpaint,
    DenseAe,
    ConvAe,
    UnetSegment,
}

impl ArchKind {
    pub const ALL: [ArchKind; 5] = [
        ArchKind::UnetDenoiser,
        ArchKind::UnetInpaint,
        ArchKind::DenseAe,
        ArchKind::ConvAe,
        ArchKind::UnetSegment,
    ];

    /// The name in a pipeline file's `model.arch`.
    pub fn name(self) -> &'static str {
        match self {
            ArchKind::UnetDenoiser => "unet-denoiser",
            ArchKind::UnetInpaint => "unet-inpaint",
            ArchKind::DenseAe => "dense-ae",
            ArchKind::ConvAe => "conv-ae",
            ArchKind::UnetSegment => "unet-segment",
        }
    }

    /// The architecture of that name, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One architecture and its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Arch {
    /// The blind residual U-Net denoiser.
    UnetDenoiser(DenoiserConfig),
    /// The denoiser's network given the frame and its mask of known pixels; its config has
    /// `extra_inputs = 2` (the mask and the classical fill-in).
    UnetInpaint(DenoiserConfig),
    /// A dense autoencoder of frames resized to `size` (`[width, height]`).
    DenseAe {
        size: [usize; 2],
        net: DenseAeConfig,
    },
    /// A convolutional autoencoder of frames resized to `size` (`[width, height]`).
    ConvAe { size: [usize; 2], net: ConvAeConfig },
    /// The segmentation U-Net.
    UnetSegment(UNetConfig),
}

impl Arch {
    pub fn kind(&self) -> ArchKind {
        match self {
            Arch::UnetDenoiser(_) => ArchKind::UnetDenoiser,
            Arch::UnetInpaint(_) => ArchKind::UnetInpaint,
            Arch::DenseAe { .. } => ArchKind::DenseAe,
            Arch::ConvAe { .. } => ArchKind::ConvAe,
            Arch::UnetSegment(_) => ArchKind::UnetSegment,
        }
    }

    /// The name in a pipeline file (for messages and metadata).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// What the architecture is for.
    pub fn task(&self) -> Task {
        match self {
            Arch::UnetDenoiser(_) | Arch::UnetInpaint(_) => Task::Denoise,
            Arch::DenseAe { .. } | Arch::ConvAe { .. } => Task::Reconstruct,
            Arch::UnetSegment(_) => Task::Segment,
        }
    }

    /// H and W of a model input must be a multiple of this: one halving per level, except
    /// the segmentation U-Net's first level, which stays at full resolution.
    pub fn size_multiple(&self) -> usize {
        match self {
            Arch::UnetDenoiser(d) | Arch::UnetInpaint(d) => 1 << d.channels.len(),
            Arch::DenseAe { .. } => 1,
            Arch::ConvAe { net, .. } => 1 << net.channels.len(),
            Arch::UnetSegment(u) => 1 << u.channels.len().saturating_sub(1),
        }
    }

    /// The `(width, height)` every frame is resized to, for the fixed-size autoencoders.
    pub fn fixed_size(&self) -> Option<(usize, usize)> {
        match self {
            Arch::DenseAe { size: [w, h], .. } | Arch::ConvAe { size: [w, h], .. } => {
                Some((*w, *h))
            }
            Arch::UnetDenoiser(_) | Arch::UnetInpaint(_) | Arch::UnetSegment(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in ArchKind::ALL {
            assert_eq!(ArchKind::from_name(k.name()), Some(k));
        }
        assert_eq!(ArchKind::from_name("unet"), None);
    }
}
