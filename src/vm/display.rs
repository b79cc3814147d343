//! Frames from QEMU's `screendump` (PPM) to PNG, with optional downscaling and change detection.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{imageops, ImageEncoder, RgbImage};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DisplayError {
    #[error("screendump is not a readable PPM image")]
    Decode(#[source] image::ImageError),
    #[error("could not encode PNG")]
    Encode(#[source] image::ImageError),
}

/// One full-resolution frame of the guest screen.
#[derive(Clone)]
pub struct Frame {
    pub image: RgbImage,
}

impl Frame {
    pub fn from_ppm(bytes: &[u8]) -> Result<Self, DisplayError> {
        let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Pnm)
            .map_err(DisplayError::Decode)?;
        Ok(Frame {
            image: img.into_rgb8(),
        })
    }

    pub fn width(&self) -> u32 {
        self.image.width()
    }

    pub fn height(&self) -> u32 {
        self.image.height()
    }

    /// PNG of this frame scaled by `scale` (≤ 1). Fast compression: a desktop PNG costs a few
    /// milliseconds instead of ~40 ms at the default level, for ~2x the bytes.
    pub fn png(&self, scale: f64) -> Result<Encoded, DisplayError> {
        let (w, h) = scaled_size(self.width(), self.height(), scale);
        let resized;
        let img = if (w, h) == (self.width(), self.height()) {
            &self.image
        } else {
            resized = downscale(&self.image, w, h);
            &resized
        };
        encode(img)
    }

    /// PNG of the region at (x, y) of `width`x`height` screen pixels (inside the frame), scaled by
    /// `scale`: 1 is full resolution, above 1 enlarges small text for reading.
    pub fn region_png(
        &self,
        (x, y, width, height): (u32, u32, u32, u32),
        scale: f64,
    ) -> Result<Encoded, DisplayError> {
        let crop = imageops::crop_imm(&self.image, x, y, width, height).to_image();
        let w = ((width as f64) * scale).round().max(1.0) as u32;
        let h = ((height as f64) * scale).round().max(1.0) as u32;
        let img = if (w, h) == (width, height) {
            crop
        } else if scale < 1.0 {
            imageops::thumbnail(&crop, w, h)
        } else {
            // Enlarged pixels stay sharp squares, so text reads as the screen shows it.
            imageops::resize(&crop, w, h, imageops::FilterType::Nearest)
        };
        encode(&img)
    }

    /// How many pixels differ from `other`; a different size counts as all changed.
    pub fn changed_pixels(&self, other: &Frame) -> u64 {
        if self.image.dimensions() != other.image.dimensions() {
            return u64::from(self.width()) * u64::from(self.height());
        }
        self.image
            .as_raw()
            .chunks_exact(3)
            .zip(other.image.as_raw().chunks_exact(3))
            .filter(|(a, b)| a != b)
            .count() as u64
    }
}

/// Area averaging (a box filter sized to the scale: sharp enough for text at 0.5x) with
/// `fast_image_resize`'s SIMD kernels: a fraction of a full frame's encode, where `image`'s
/// `thumbnail` cost more than the encode it saved.
fn downscale(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    use fast_image_resize as fr;
    let resized =
        fr::images::ImageRef::new(img.width(), img.height(), img.as_raw(), fr::PixelType::U8x3)
            .ok()
            .and_then(|src| {
                let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8x3);
                let options = fr::ResizeOptions::new()
                    .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Box));
                fr::Resizer::new().resize(&src, &mut dst, &options).ok()?;
                RgbImage::from_raw(w, h, dst.into_vec())
            });
    // (Only a buffer that does not match its size fails; the slow path stays correct.)
    resized.unwrap_or_else(|| imageops::thumbnail(img, w, h))
}

fn encode(img: &RgbImage) -> Result<Encoded, DisplayError> {
    let (w, h) = img.dimensions();
    let mut out = Vec::with_capacity((w * h) as usize / 2);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .map_err(DisplayError::Encode)?;
    Ok(Encoded {
        png: out,
        width: w,
        height: h,
    })
}

pub struct Encoded {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

pub fn scaled_size(w: u32, h: u32, scale: f64) -> (u32, u32) {
    let s = scale.clamp(0.01, 1.0);
    (
        ((w as f64) * s).round().max(1.0) as u32,
        ((h as f64) * s).round().max(1.0) as u32,
    )
}

/// A frame in which fewer than this many pixels changed counts as unchanged: a blinking text
/// cursor changes about 18 px, a clock's second hand a few dozen.
pub const SETTLE_THRESHOLD_PX: u64 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn ppm(w: u32, h: u32, fill: u8) -> Vec<u8> {
        let mut v = format!("P6\n{w} {h}\n255\n").into_bytes();
        v.extend(std::iter::repeat_n(fill, (w * h * 3) as usize));
        v
    }

    #[test]
    fn ppm_decodes_and_png_round_trips_with_scale() {
        let f = Frame::from_ppm(&ppm(64, 40, 200)).unwrap();
        assert_eq!((f.width(), f.height()), (64, 40));
        let full = f.png(1.0).unwrap();
        let back = image::load_from_memory(&full.png).unwrap();
        assert_eq!((back.width(), back.height()), (64, 40));
        let half = f.png(0.5).unwrap();
        assert_eq!((half.width, half.height), (32, 20));
        let back = image::load_from_memory(&half.png).unwrap();
        assert_eq!((back.width(), back.height()), (32, 20));
    }

    #[test]
    fn a_region_is_the_same_pixels_at_full_resolution() {
        let mut f = Frame::from_ppm(&ppm(64, 40, 10)).unwrap();
        f.image.put_pixel(20, 12, image::Rgb([250, 0, 0]));
        let z = f.region_png((18, 10, 8, 6), 1.0).unwrap();
        let back = image::load_from_memory(&z.png).unwrap().into_rgb8();
        assert_eq!(back.dimensions(), (8, 6));
        assert_eq!(back.get_pixel(2, 2), &image::Rgb([250, 0, 0]));
        let big = f.region_png((18, 10, 8, 6), 2.0).unwrap();
        assert_eq!((big.width, big.height), (16, 12));
    }

    #[test]
    fn change_detection_counts_pixels() {
        let a = Frame::from_ppm(&ppm(8, 8, 0)).unwrap();
        let mut b = a.clone();
        b.image.put_pixel(3, 3, image::Rgb([1, 2, 3]));
        assert_eq!(a.changed_pixels(&b), 1);
        assert_eq!(a.changed_pixels(&a), 0);
        let c = Frame::from_ppm(&ppm(4, 4, 0)).unwrap();
        assert_eq!(a.changed_pixels(&c), 64);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(matches!(
            Frame::from_ppm(b"nope"),
            Err(DisplayError::Decode(_))
        ));
    }
}
