//! Tests of `slice`.

use super::super::output::{assert_plot_file, decode_png, png_size};
use super::*;
use ndarray::Array4;

const GREEN: [u8; 3] = BoxColors::GT;
const RED: [u8; 3] = BoxColors::PREDICTION;

/// A 32×32 slice: background 0, a bright square at rows 10..20, cols 8..16 (value 100).
fn square_slice() -> Array2<f32> {
    let mut s = Array2::<f32>::zeros((32, 32));
    for r in 10..20 {
        for c in 8..16 {
            s[[r, c]] = 100.0;
        }
    }
    s
}

fn boxed_options() -> SliceOptions {
    SliceOptions {
        title: "case 7".into(),
        axis: 0,
        index: Some(5),
        window: Some((50.0, 100.0)),
        gt_boxes: vec![[3.0, 10.0, 8.0, 7.0, 20.0, 16.0]],
        pred_boxes: vec![
            [5.0, 2.0, 20.0, 6.0, 6.0, 30.0],
            [0.0, 0.0, 0.0, 5.0, 32.0, 32.0],
        ],
        pred_scores: vec![0.93, 0.5],
        ..Default::default()
    }
}

#[test]
fn crossing_uses_voxel_centres() {
    let b = [2.0, 0.0, 0.0, 4.0, 1.0, 1.0];
    assert!(!box_crosses_slice(&b, 0, 1));
    assert!(box_crosses_slice(&b, 0, 2));
    assert!(box_crosses_slice(&b, 0, 3));
    assert!(!box_crosses_slice(&b, 0, 4));
    // A thin box between voxel centres crosses nothing.
    assert!(!box_crosses_slice(&[2.6, 0.0, 0.0, 3.4, 1.0, 1.0], 0, 2));
    assert_eq!(
        project_box(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 1, 3),
        Some([1.0, 3.0, 4.0, 6.0])
    );
    assert_eq!(
        project_box(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 4),
        Some([1.0, 2.0, 4.0, 5.0])
    );
    assert_eq!(project_box(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 6), None);
    let boxes = [
        [0.0, 0.0, 0.0, 2.0, 2.0, 2.0],
        [3.0, 1.0, 1.0, 5.0, 4.0, 4.0],
    ];
    assert_eq!(
        boxes_in_slice(&boxes, 0, 3),
        vec![(1, [1.0, 1.0, 4.0, 4.0])]
    );
    assert_eq!(boxes_in_slice(&boxes, 2, 1).len(), 2);
}

#[test]
fn rgb_render_shows_gray_inside_and_green_outline_at_the_box() {
    let options = boxed_options();
    let image = render_slice_rgb(square_slice().view(), &options).unwrap();
    // 32 px upscaled ×12 to reach 384 px.
    let layout = layout(32, 32, &options).unwrap();
    assert_eq!((layout.display_width, layout.display_height), (384, 384));
    assert_eq!((image.width, image.height), (layout.width, layout.height));
    let (x0, y0) = (layout.x(8.0), layout.y(10.0));
    let (x1, y1) = (layout.x(16.0), layout.y(20.0));
    assert_eq!(x1 - x0, 8 * 12);
    // Inside the box: the square is white (value 100 = top of the window)...
    assert_eq!(image.get((x0 + 5) as u32, (y0 + 5) as u32), [255, 255, 255]);
    assert_eq!(image.get((x1 - 1) as u32, (y1 - 1) as u32), [255, 255, 255]);
    // ...the outline lies just outside it, 2 px wide, on all four sides.
    for (x, y) in [
        (x0 - 1, y0 + 20),
        (x0 - 2, y0 + 20),
        (x1, y0 + 20),
        (x1 + 1, y1 - 3),
        (x0 + 30, y0 - 1),
        (x0 + 30, y1 + 1),
    ] {
        assert_eq!(image.get(x as u32, y as u32), GREEN, "({x}, {y})");
    }
    // Outside the outline: the black background of the slice.
    assert_eq!(image.get((x1 + 2) as u32, (y0 + 20) as u32), [0, 0, 0]);
    // Mid-gray voxel check: value 50 = window centre.
    let mut slice = square_slice();
    slice[[0, 31]] = 50.0;
    let image = render_slice_rgb(slice.view(), &options).unwrap();
    let gray = image.get((layout.x(31.0) + 4) as u32, (layout.y(0.0) + 4) as u32);
    assert!(
        gray[0] == gray[1] && gray[1] == gray[2] && (127..=128).contains(&gray[0]),
        "{gray:?}"
    );
}

#[test]
fn predictions_are_red_and_only_crossing_boxes_are_drawn() {
    let mut options = boxed_options();
    let layout = layout(32, 32, &options).unwrap();
    let image = render_slice_rgb(square_slice().view(), &options).unwrap();
    // Prediction 0 crosses d = 5 (5 <= 5.5 < 6): rows 2..6, cols 20..30.
    assert_eq!(
        image.get((layout.x(25.0)) as u32, (layout.y(6.0) + 1) as u32),
        RED
    );
    // Prediction 1 spans d 0..5: 5.5 is outside, so nothing drawn along its right edge.
    assert_eq!(
        image.get(layout.x(32.0) as u32, layout.y(16.0) as u32),
        [255, 255, 255]
    );
    // Threshold above 0.93: the prediction disappears.
    options.score_threshold = 0.95;
    let image = render_slice_rgb(square_slice().view(), &options).unwrap();
    assert_ne!(
        image.get((layout.x(25.0)) as u32, (layout.y(6.0) + 1) as u32),
        RED
    );
    // Another slice: the GT box (d 3..7) is gone at d = 8.
    options.index = Some(8);
    let image = render_slice_rgb(square_slice().view(), &options).unwrap();
    assert_eq!(
        image.get((layout.x(8.0) - 1) as u32, (layout.y(10.0) + 20) as u32),
        [0, 0, 0]
    );
}

#[test]
fn nan_scores_are_skipped_and_labels_follow_classes() {
    let options = SliceOptions {
        index: Some(5),
        pred_boxes: vec![
            [5.0, 2.0, 20.0, 6.0, 6.0, 30.0],
            [5.0, 22.0, 2.0, 6.0, 26.0, 6.0],
        ],
        pred_scores: vec![f64::NAN, 0.875],
        pred_classes: vec![0, 1],
        class_names: vec!["benign".into(), "malignant".into()],
        gt_boxes: vec![[3.0, 10.0, 8.0, 7.0, 20.0, 16.0]],
        gt_classes: vec![1],
        ..Default::default()
    };
    let boxes = slice_boxes(&options, 32).unwrap();
    let labels: Vec<&str> = boxes.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["malignant", "malignant 0.88"]);
    let svg = render_slice_svg(square_slice().view(), &options).unwrap();
    assert!(svg.contains("malignant 0.88") && !svg.contains("benign"));
}

#[test]
fn flip_and_aspect_move_the_box() {
    let options = SliceOptions {
        flip_vertical: true,
        pixel_aspect: Some(2.5),
        legend: false,
        index: Some(5),
        gt_boxes: vec![[3.0, 10.0, 8.0, 7.0, 20.0, 16.0]],
        window: Some((50.0, 100.0)),
        ..Default::default()
    };
    let layout = layout(32, 32, &options).unwrap();
    // Rows are 2.5× taller: 32 × 2.5 = 80 base rows, upscaled ×5 to reach 384.
    assert_eq!((layout.display_width, layout.display_height), (160, 400));
    let image = render_slice_rgb(square_slice().view(), &options).unwrap();
    // Rows 10..20 flipped are displayed rows 12..22.
    let (x, y) = (layout.x(12.0), layout.y(12.0));
    assert_eq!(image.get(x as u32, (y - 1) as u32), GREEN);
    assert_eq!(image.get(x as u32, y as u32), [255, 255, 255]);
    assert_eq!(image.get(x as u32, (layout.y(22.0)) as u32), GREEN);
}

#[test]
fn large_slices_are_drawn_one_to_one() {
    let slice = Array2::<f32>::from_shape_fn((512, 512), |(r, c)| (r + c) as f32);
    let options = SliceOptions::default();
    let image = render_slice_rgb(slice.view(), &options).unwrap();
    let layout = layout(512, 512, &options).unwrap();
    assert_eq!((layout.display_width, layout.display_height), (512, 512));
    assert_eq!(image.width, 512 + 2 * PAD);
    // A gradient: percentile window maps the top-left corner to black, bottom-right to white.
    assert_eq!(image.get(layout.left as u32, layout.top as u32), [0, 0, 0]);
    assert_eq!(
        image.get(layout.left as u32 + 511, layout.top as u32 + 511),
        [255, 255, 255]
    );
}

#[test]
fn files_have_the_right_format_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let png_path = dir.path().join("slice.png");
    plot_slice(&png_path, square_slice().view(), &boxed_options()).unwrap();
    assert_plot_file(&png_path, (416, 384));
    let bytes = std::fs::read(&png_path).unwrap();
    let decoded = decode_png(&bytes);
    assert_eq!(
        decoded,
        render_slice_rgb(square_slice().view(), &boxed_options()).unwrap()
    );
    assert_eq!(png_size(&bytes), Some((decoded.width, decoded.height)));
    let svg_path = dir.path().join("slice.svg");
    plot_slice(&svg_path, square_slice().view(), &boxed_options()).unwrap();
    assert_plot_file(&svg_path, (0, 0));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains("data:image/png;base64,"));
    assert!(svg.contains("0.93"), "score label");
    // The image comes before the boxes so they are drawn over it.
    assert!(svg.find("<image").unwrap() < svg.find("fill=\"#00DC00\"").unwrap());
}

#[test]
fn volume_slices_follow_axis_and_spacing() {
    let mut data = Array4::<f32>::zeros((2, 4, 6, 8));
    data[[1, 2, 3, 5]] = 7.0;
    let volume = Volume {
        data,
        spacing: [2.5, 0.7, 0.7],
        affine: [[0.0; 4]; 4],
        source: Vec::new(),
    };
    let s = extract_slice(&volume, 1, 0, 2).unwrap();
    assert_eq!(s.dim(), (6, 8));
    assert_eq!(s[[3, 5]], 7.0);
    let s = extract_slice(&volume, 1, 2, 5).unwrap();
    assert_eq!(s.dim(), (4, 6));
    assert_eq!(s[[2, 3]], 7.0);
    assert!((slice_pixel_aspect(volume.spacing, 2).unwrap() - 2.5 / 0.7).abs() < 1e-12);
    assert_eq!(slice_pixel_aspect(volume.spacing, 0).unwrap(), 1.0);
    let err = extract_slice(&volume, 2, 0, 0).unwrap_err();
    assert!(err.to_string().contains("channel"), "{err}");
    let err = extract_slice(&volume, 0, 1, 6).unwrap_err();
    assert!(err.to_string().contains("axis H of length 6"), "{err}");
    let (slice, options) = volume_slice(
        &volume,
        &SliceOptions {
            axis: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(options.index, Some(3));
    assert_eq!(slice.dim(), (4, 8));
    assert!((options.pixel_aspect.unwrap() - 2.5 / 0.7).abs() < 1e-12);
    let dir = tempfile::tempdir().unwrap();
    plot_volume_slice(
        dir.path().join("v.png"),
        &volume,
        &SliceOptions {
            axis: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_plot_file(&dir.path().join("v.png"), (384, 384));
}

#[test]
fn bad_input_gives_named_errors() {
    let slice = square_slice();
    let mut options = boxed_options();
    options.pred_scores = vec![0.5];
    let err = render_slice_rgb(slice.view(), &options).unwrap_err();
    assert!(err.to_string().contains("pred_scores"), "{err}");
    let mut options = boxed_options();
    options.gt_boxes[0] = [5.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let err = render_slice_rgb(slice.view(), &options).unwrap_err();
    assert!(err.to_string().contains("gt_boxes[0]"), "{err}");
    let mut options = boxed_options();
    options.index = None;
    assert!(
        render_slice_rgb(slice.view(), &options)
            .unwrap_err()
            .to_string()
            .contains("index")
    );
    let options = SliceOptions {
        window: Some((0.0, 0.0)),
        ..Default::default()
    };
    assert!(
        render_slice_rgb(slice.view(), &options)
            .unwrap_err()
            .to_string()
            .contains("window")
    );
    let empty_slice = Array2::<f32>::zeros((0, 4));
    assert!(matches!(
        render_slice_rgb(empty_slice.view(), &SliceOptions::default()),
        Err(PlotError::EmptyInput { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let err = plot_slice(
        dir.path().join("s.tiff"),
        slice.view(),
        &SliceOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("s.tiff"), "{err}");
    let err = plot_slice_values(
        dir.path().join("s.png"),
        &[0.0; 10],
        3,
        4,
        &SliceOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        PlotError::LengthMismatch {
            expected: 12,
            got: 10,
            ..
        }
    ));
}

#[test]
fn nan_voxels_do_not_break_the_window() {
    let mut slice = square_slice();
    slice[[0, 0]] = f32::NAN;
    slice[[0, 1]] = f32::INFINITY;
    let image = render_slice_rgb(
        slice.view(),
        &SliceOptions {
            percentiles: (0.0, 100.0),
            ..Default::default()
        },
    )
    .unwrap();
    let layout = layout(32, 32, &SliceOptions::default()).unwrap();
    assert_eq!(
        image.get(layout.x(0.0) as u32, layout.y(0.0) as u32),
        [0, 0, 0]
    );
    assert_eq!(
        image.get((layout.x(10.0)) as u32, layout.y(12.0) as u32),
        [255, 255, 255]
    );
}

#[test]
fn options_deserialise_from_a_script_map() {
    let options: SliceOptions = serde_json::from_str(
            r#"{"index": 12, "window": [40, 400], "gt_boxes": [[1, 2, 3, 4, 5, 6]], "pred_scores": []}"#,
        )
        .unwrap();
    assert_eq!(options.window, Some((40.0, 400.0)));
    assert_eq!(options.gt_boxes, vec![[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]);
    assert!(serde_json::from_str::<SliceOptions>(r#"{"windw": [1, 2]}"#).is_err());
}
