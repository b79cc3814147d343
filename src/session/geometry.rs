//! The space agents' coordinates are in, and where a pointer action lands: checked against the
//! latest screenshot before a call queues.

use super::action::{Plan, Point, Region, MAX_ZOOM_SCALE, MAX_ZOOM_SIDE};
use super::error::SessionError;
use crate::vm::display::scaled_size;

/// The screen size and the scale of the latest screenshot the session answered. Read without
/// the lane lock, so coordinates are checked before a call queues.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub width: u32,
    pub height: u32,
    pub scale: f64,
}

/// Where the pointer acted, in screen pixels of the full-resolution frame (for the ledger).
/// `pointer` is None for an action at wherever the pointer is: the lane fills it in.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub pointer: Option<(u32, u32)>,
    pub path: Option<Vec<(u32, u32)>>,
    /// A zoomed region: x, y, width, height.
    pub region: Option<(u32, u32, u32, u32)>,
}

impl Geometry {
    fn space(&self) -> (u32, u32, String) {
        let (w, h) = scaled_size(self.width, self.height, self.scale);
        let space = if self.scale < 1.0 {
            format!(
                "pixels of the latest screenshot, {w}x{h} at scale {:.3}",
                self.scale
            )
        } else {
            format!("screen pixels, {w}x{h}")
        };
        (w, h, space)
    }

    /// Maps a point in screenshot space to screen pixels, or says which range is valid.
    fn screen_point(&self, p: Point, what: &'static str) -> Result<(u32, u32), SessionError> {
        let (w, h, space) = self.space();
        let ok = |v: f64, max: u32| v.is_finite() && v >= 0.0 && v <= (max - 1) as f64;
        if !ok(p.x, w) || !ok(p.y, h) {
            return Err(SessionError::OffScreen {
                what,
                x: p.x,
                y: p.y,
                max_x: w - 1,
                max_y: h - 1,
                space,
            });
        }
        let sx = ((p.x / self.scale).round() as u32).min(self.width - 1);
        let sy = ((p.y / self.scale).round() as u32).min(self.height - 1);
        Ok((sx, sy))
    }

    /// Maps a region in screenshot space to screen pixels; it must lie on the screen.
    fn screen_region(&self, r: Region) -> Result<(u32, u32, u32, u32), SessionError> {
        let (x0, y0) = self.screen_point(Point { x: r.x, y: r.y }, "zoom region start")?;
        let end = Point {
            x: r.x + r.width - 1.0,
            y: r.y + r.height - 1.0,
        };
        let (x1, y1) = self.screen_point(end, "zoom region end (x+width-1, y+height-1)")?;
        // Whole screen pixels under the region: at scale 0.5 a 10-pixel region covers 20.
        let x1 = (((r.x + r.width) / self.scale).round() as u32).clamp(x1 + 1, self.width);
        let y1 = (((r.y + r.height) / self.scale).round() as u32).clamp(y1 + 1, self.height);
        Ok((x0, y0, x1 - x0, y1 - y0))
    }

    /// Where a pointer action lands, checked against the latest screenshot before anything runs.
    pub fn trace(&self, plan: &Plan) -> Result<Trace, SessionError> {
        let one = |p: Option<Point>, what| -> Result<Trace, SessionError> {
            Ok(Trace {
                pointer: p.map(|p| self.screen_point(p, what)).transpose()?,
                ..Trace::default()
            })
        };
        match plan {
            Plan::Click { at, .. } => one(*at, "click"),
            Plan::MouseMove { to } => one(Some(*to), "mouse_move"),
            Plan::MouseButton { at, .. } => one(*at, "mouse button"),
            Plan::Scroll { at, .. } => one(*at, "scroll"),
            Plan::Drag { path, .. } => {
                let last = path.len() - 1;
                let points = path
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let what = match i {
                            0 => "drag start",
                            i if i == last => "drag end",
                            _ => "drag path point",
                        };
                        self.screen_point(*p, what)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Trace {
                    pointer: points.last().copied(),
                    path: Some(points),
                    region: None,
                })
            }
            Plan::Zoom { region, scale } => {
                let r = self.screen_region(*region)?;
                // The answer's largest side, in pixels, stays within MAX_ZOOM_SIDE.
                let side = f64::from(r.2.max(r.3));
                let max_scale = (f64::from(MAX_ZOOM_SIDE) / side).min(MAX_ZOOM_SCALE);
                if (side * scale).round() > f64::from(MAX_ZOOM_SIDE) {
                    return Err(SessionError::OutOfRange {
                        field: "scale",
                        value: scale.to_string(),
                        valid: format!(
                            "0.01..={:.2} for a region of {}x{} screen pixels (answers are at most {MAX_ZOOM_SIDE} pixels a side)",
                            (max_scale * 100.0).floor() / 100.0,
                            r.2,
                            r.3
                        ),
                    });
                }
                Ok(Trace {
                    region: Some(r),
                    ..Trace::default()
                })
            }
            _ => Ok(Trace::default()),
        }
    }

    /// A screen pixel in the latest screenshot's space.
    /// Rounded down, so the point is one this session accepts back.
    pub fn in_shot(&self, (x, y): (u32, u32)) -> Point {
        let (w, h) = scaled_size(self.width, self.height, self.scale);
        let r = |v: u32, max: u32| ((v as f64) * self.scale).floor().min(f64::from(max - 1));
        Point {
            x: r(x, w),
            y: r(y, h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Button;

    fn g(scale: f64) -> Geometry {
        Geometry {
            width: 1280,
            height: 800,
            scale,
        }
    }

    #[test]
    fn points_map_through_the_latest_screenshot_scale() {
        let g = g(0.5);
        let click = |x, y| Plan::Click {
            at: Some(Point { x, y }),
            button: Button::Left,
            count: 1,
            modifiers: vec![],
        };
        assert_eq!(
            g.trace(&click(639.0, 399.0)).unwrap().pointer,
            Some((1278, 798))
        );
        let e = g.trace(&click(640.0, 10.0)).unwrap_err().to_json();
        assert_eq!(
            (e["field"].as_str(), e["valid"].as_str()),
            (Some("x"), Some("0..=639"))
        );
        let e = g.trace(&click(10.0, f64::NAN)).unwrap_err().to_json();
        assert_eq!(e["field"], "y");
        let drag = Plan::Drag {
            path: vec![
                Point { x: 0.0, y: 0.0 },
                Point { x: 50.0, y: 0.0 },
                Point { x: 100.0, y: 50.0 },
            ],
            button: Button::Left,
            modifiers: vec![],
        };
        let t = g.trace(&drag).unwrap();
        assert_eq!(t.path, Some(vec![(0, 0), (100, 0), (200, 100)]));
        assert_eq!(
            g.trace(&Plan::Key {
                combos: vec![],
                hold_ms: 0
            })
            .unwrap()
            .pointer,
            None
        );
        assert_eq!(g.in_shot((1278, 798)), Point { x: 639.0, y: 399.0 });
    }

    #[test]
    fn zoom_regions_cover_the_screen_pixels_under_them() {
        let zoom = |x, y, width, height| Plan::Zoom {
            region: Region {
                x,
                y,
                width,
                height,
            },
            scale: 1.0,
        };
        assert_eq!(
            g(1.0).trace(&zoom(10.0, 20.0, 100.0, 50.0)).unwrap().region,
            Some((10, 20, 100, 50))
        );
        assert_eq!(
            g(0.5).trace(&zoom(10.0, 20.0, 100.0, 50.0)).unwrap().region,
            Some((20, 40, 200, 100))
        );
        assert_eq!(
            g(1.0).trace(&zoom(0.0, 0.0, 1280.0, 800.0)).unwrap().region,
            Some((0, 0, 1280, 800))
        );
        let e = g(1.0)
            .trace(&zoom(1200.0, 0.0, 100.0, 10.0))
            .unwrap_err()
            .to_json();
        assert_eq!(
            (e["field"].as_str(), e["valid"].as_str()),
            (Some("x"), Some("0..=1279"))
        );
    }
}
